//! A small Modbus TCP client over mutual TLS, raw frames in and out: the demo's scripted HMI,
//! and a client for tests and the load benchmark that can also send what a well-behaved
//! library never would (hostile frames, pipelined bursts).

use crate::protocol::modbus;
use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Longest a client waits for one response before calling the exchange failed.
pub const RESPONSE_WAIT: Duration = Duration::from_secs(10);

pub struct ModbusClient<S> {
    stream: S,
    buf: BytesMut,
    next_transaction: u16,
}

/// Connects with TLS; `server_name` `None` sends no SNI (the address is used as the name).
pub async fn connect_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: Option<&str>,
) -> io::Result<ModbusClient<TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = match server_name {
        Some(n) => ServerName::try_from(n.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let stream = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(ModbusClient::new(stream))
}

/// Builds an ADU: MBAP header (protocol 0, length from the PDU) + PDU.
pub fn adu(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(7 + pdu.len());
    v.extend_from_slice(&transaction.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    v.push(unit);
    v.extend_from_slice(pdu);
    v
}

impl<S: AsyncRead + AsyncWrite + Unpin> ModbusClient<S> {
    pub fn new(stream: S) -> ModbusClient<S> {
        ModbusClient {
            stream,
            buf: BytesMut::with_capacity(1024),
            next_transaction: 1,
        }
    }

    pub fn next_transaction(&mut self) -> u16 {
        let t = self.next_transaction;
        self.next_transaction = self.next_transaction.wrapping_add(1);
        t
    }

    /// Sends one request and waits for its response; returns the response PDU.
    pub async fn request(&mut self, unit: u8, pdu: &[u8]) -> io::Result<Vec<u8>> {
        let transaction = self.next_transaction();
        self.send(&adu(transaction, unit, pdu)).await?;
        let response = self
            .read_frame()
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))?;
        let header = modbus::Mbap::peek(&response)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short response"))?;
        if header.transaction_id != transaction {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "response transaction {} for request {transaction}",
                    header.transaction_id
                ),
            ));
        }
        Ok(response[modbus::MBAP_LEN..].to_vec())
    }

    /// Writes raw bytes (one or several frames, or garbage).
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads one whole ADU; `None` on a clean end of stream.
    pub async fn read_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        tokio::time::timeout(RESPONSE_WAIT, async {
            loop {
                match modbus::split_frame(&self.buf) {
                    Ok(Some((frame, _))) => {
                        let frame = frame.to_vec();
                        self.buf.advance(frame.len());
                        return Ok(Some(frame));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Ok(None);
                }
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response"))?
    }

    pub fn into_inner(self) -> S {
        self.stream
    }
}
