//! A tiny test-only MQTT 3.1.1/5.0 encoder and decoder, and a raw mTLS client that writes
//! hand-built bytes and reads whole packets back.

use super::{V, WAIT};
use bytes::{Buf, BytesMut};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

// ----- encoding -------------------------------------------------------------------------------

pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

/// A whole packet: first byte, remaining length, body.
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    varint(body.len(), &mut v);
    v.extend_from_slice(body);
    v
}

pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn put_props(out: &mut Vec<u8>, props: &[u8]) {
    varint(props.len(), out);
    out.extend_from_slice(props);
}

/// A will message for CONNECT.
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
}

/// CONNECT with clean start, keep-alive 30 s, no credentials.
pub fn connect(v: V, client_id: &str, will: Option<&Will>) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, b"MQTT");
    b.push(if v.is5() { 5 } else { 4 });
    let mut flags = 0x02;
    if let Some(w) = will {
        flags |= 0x04 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
    }
    b.push(flags);
    b.extend_from_slice(&30u16.to_be_bytes());
    if v.is5() {
        put_props(&mut b, &[]);
    }
    put_str(&mut b, client_id.as_bytes());
    if let Some(w) = will {
        if v.is5() {
            put_props(&mut b, &[]);
        }
        put_str(&mut b, w.topic.as_bytes());
        put_str(&mut b, w.payload);
    }
    packet(0x10, &b)
}

/// PUBLISH; `topic` as raw bytes (may be invalid UTF-8); `alias` adds a v5 Topic Alias.
pub fn publish_raw(
    v: V,
    topic: &[u8],
    qos: u8,
    retain: bool,
    pkid: u16,
    payload: &[u8],
    alias: Option<u16>,
) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, topic);
    if qos > 0 {
        b.extend_from_slice(&pkid.to_be_bytes());
    }
    if v.is5() {
        let mut props = Vec::new();
        if let Some(a) = alias {
            props.push(0x23);
            props.extend_from_slice(&a.to_be_bytes());
        }
        put_props(&mut b, &props);
    }
    b.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &b)
}

pub fn publish(v: V, topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    publish_raw(v, topic.as_bytes(), qos, false, pkid, payload, None)
}

pub fn pubrel(pkid: u16) -> Vec<u8> {
    packet(0x62, &pkid.to_be_bytes())
}

pub fn puback(pkid: u16) -> Vec<u8> {
    packet(0x40, &pkid.to_be_bytes())
}

/// SUBSCRIBE with (filter, requested QoS) pairs.
pub fn subscribe(v: V, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if v.is5() {
        put_props(&mut b, &[]);
    }
    for (f, q) in filters {
        put_str(&mut b, f.as_bytes());
        b.push(*q);
    }
    packet(0x82, &b)
}

pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}

pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

// ----- decoding -------------------------------------------------------------------------------

/// A PUBLISH taken apart: (topic, packet id if QoS > 0, properties, payload).
pub type PublishParts = (Vec<u8>, Option<u16>, Vec<(u8, Prop)>, Vec<u8>);

/// One control packet as received.
#[derive(Clone, PartialEq, Eq)]
pub struct Packet {
    pub first: u8,
    pub body: Vec<u8>,
    pub v5: bool,
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = [
            "0?",
            "CONNECT",
            "CONNACK",
            "PUBLISH",
            "PUBACK",
            "PUBREC",
            "PUBREL",
            "PUBCOMP",
            "SUBSCRIBE",
            "SUBACK",
            "UNSUBSCRIBE",
            "UNSUBACK",
            "PINGREQ",
            "PINGRESP",
            "DISCONNECT",
            "AUTH",
        ][usize::from(self.kind())];
        write!(f, "{name}[{:02x} ", self.first)?;
        for b in &self.body {
            write!(f, "{b:02x}")?;
        }
        if self.kind() == PUBLISH {
            write!(f, " topic={:?}", String::from_utf8_lossy(&self.publish().0))?;
        }
        write!(f, "]")
    }
}

/// Reads a variable byte integer at `*at`.
pub fn read_varint(b: &[u8], at: &mut usize) -> Option<usize> {
    let mut n = 0usize;
    for i in 0..4 {
        let byte = *b.get(*at)?;
        *at += 1;
        n |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// A v5 property value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Prop {
    Int(u64),
    Bytes(Vec<u8>),
    Pair(Vec<u8>, Vec<u8>),
}

/// Parses a v5 property block at `*at` (length first); panics on malformed input.
pub fn read_props(b: &[u8], at: &mut usize) -> Vec<(u8, Prop)> {
    let len = read_varint(b, at).expect("property length");
    let end = *at + len;
    let mut out = Vec::new();
    let u16_at = |i: usize| usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
    while *at < end {
        let id = b[*at];
        *at += 1;
        let v = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                *at += 1;
                Prop::Int(u64::from(b[*at - 1]))
            }
            0x13 | 0x21 | 0x22 | 0x23 => {
                *at += 2;
                Prop::Int(u16_at(*at - 2) as u64)
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                *at += 4;
                Prop::Int(u64::from(u32::from_be_bytes([
                    b[*at - 4],
                    b[*at - 3],
                    b[*at - 2],
                    b[*at - 1],
                ])))
            }
            0x0B => Prop::Int(read_varint(b, at).expect("varint property") as u64),
            0x26 => {
                let kl = u16_at(*at);
                let k = b[*at + 2..*at + 2 + kl].to_vec();
                *at += 2 + kl;
                let vl = u16_at(*at);
                let v = b[*at + 2..*at + 2 + vl].to_vec();
                *at += 2 + vl;
                Prop::Pair(k, v)
            }
            _ => {
                let l = u16_at(*at);
                let v = b[*at + 2..*at + 2 + l].to_vec();
                *at += 2 + l;
                Prop::Bytes(v)
            }
        };
        out.push((id, v));
    }
    out
}

pub fn prop_int(props: &[(u8, Prop)], id: u8) -> Option<u64> {
    props.iter().find_map(|(i, p)| match p {
        Prop::Int(n) if *i == id => Some(*n),
        _ => None,
    })
}

impl Packet {
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// CONNACK: return code (3.1.1) / reason code (5.0).
    pub fn connack_code(&self) -> u8 {
        assert_eq!(self.kind(), CONNACK, "{self:?}");
        self.body[1]
    }

    /// CONNACK properties (5.0).
    pub fn connack_props(&self) -> Vec<(u8, Prop)> {
        let mut at = 2;
        read_props(&self.body, &mut at)
    }

    /// Packet id of an ack or a QoS>0 PUBLISH's ack.
    pub fn pkid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// PUBACK/PUBREC/PUBREL/PUBCOMP reason (5.0; 0 when omitted and in 3.1.1).
    pub fn ack_reason(&self) -> u8 {
        self.body.get(2).copied().unwrap_or(0)
    }

    /// SUBACK codes, one per filter.
    pub fn suback_codes(&self) -> Vec<u8> {
        assert_eq!(self.kind(), SUBACK, "{self:?}");
        let mut at = 2;
        if self.v5 {
            read_props(&self.body, &mut at);
        }
        self.body[at..].to_vec()
    }

    /// DISCONNECT reason (0 when omitted).
    pub fn disconnect_reason(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    pub fn qos(&self) -> u8 {
        (self.first >> 1) & 3
    }

    /// PUBLISH: (topic, packet id if QoS > 0, properties, payload).
    pub fn publish(&self) -> PublishParts {
        let b = &self.body;
        if b.len() < 2 {
            return (Vec::new(), None, Vec::new(), Vec::new());
        }
        let tl = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = b[2..(2 + tl).min(b.len())].to_vec();
        let mut at = 2 + tl;
        let pkid = (self.qos() > 0).then(|| {
            at += 2;
            u16::from_be_bytes([b[at - 2], b[at - 1]])
        });
        let props = if self.v5 {
            read_props(b, &mut at)
        } else {
            Vec::new()
        };
        (topic, pkid, props, b[at.min(b.len())..].to_vec())
    }

    pub fn topic(&self) -> String {
        String::from_utf8_lossy(&self.publish().0).into_owned()
    }
}

/// Splits one packet off the front of `buf`, if whole.
pub fn split(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut at = 1;
    let mut n = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(at) else {
            return Ok(None);
        };
        at += 1;
        n |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((buf.len() >= at + n).then_some((buf[0], at, n)));
        }
    }
    Err("remaining length longer than 4 bytes".into())
}

// ----- the raw client -------------------------------------------------------------------------

/// What ended a raw connection's reading.
#[derive(Debug)]
pub enum End {
    /// The peer closed (EOF or a TLS/IO error).
    Closed(String),
    /// Nothing within the wait.
    TimedOut,
}

pub struct Raw {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    pub v: V,
}

impl Raw {
    /// TLS to the gateway with the given client config; no SNI (the IP is the name).
    pub async fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>, v: V) -> Raw {
        tokio::time::timeout(WAIT, async {
            let tcp = TcpStream::connect(addr).await.expect("TCP connect");
            tcp.set_nodelay(true).expect("nodelay");
            let stream = TlsConnector::from(config)
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .expect("TLS handshake");
            Raw {
                stream,
                buf: BytesMut::with_capacity(4096),
                v,
            }
        })
        .await
        .expect("TLS connect within the wait")
    }

    /// Writes bytes; a write error is ignored (the peer may already have closed: the next
    /// read tells).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or why there is none.
    pub async fn recv(&mut self) -> Result<Packet, End> {
        let r = tokio::time::timeout(WAIT, async {
            loop {
                match split(&self.buf) {
                    Ok(Some((first, hl, n))) => {
                        let body = self.buf[hl..hl + n].to_vec();
                        self.buf.advance(hl + n);
                        return Ok(Packet {
                            first,
                            body,
                            v5: self.v.is5(),
                        });
                    }
                    Ok(None) => {}
                    Err(e) => return Err(End::Closed(format!("undecodable bytes: {e}"))),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return Err(End::Closed("EOF".into())),
                    Ok(_) => {}
                    Err(e) => return Err(End::Closed(format!("{e}"))),
                }
            }
        })
        .await;
        r.unwrap_or(Err(End::TimedOut))
    }

    /// The next packet, which must be of `kind`; skips nothing.
    pub async fn expect(&mut self, kind: u8) -> Packet {
        match self.recv().await {
            Ok(p) if p.kind() == kind => p,
            other => panic!("expected packet type {kind}, got {other:?}"),
        }
    }

    /// Reads until the connection closes; returns the packets seen before. Panics if it stays
    /// open for the whole wait or more than 100 packets arrive.
    pub async fn closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        for _ in 0..100 {
            match self.recv().await {
                Ok(p) => seen.push(p),
                Err(End::Closed(_)) => return seen,
                Err(End::TimedOut) => {
                    panic!("connection still open after {WAIT:?}; packets seen: {seen:?}")
                }
            }
        }
        panic!("more than 100 packets and still open: {seen:?}")
    }

    /// Publishes QoS 1 and returns the PUBACK (skipping nothing).
    pub async fn publish1(&mut self, topic: &str, pkid: u16, payload: &[u8]) -> Packet {
        let p = publish(self.v, topic, 1, pkid, payload);
        self.send(&p).await;
        let ack = self.expect(PUBACK).await;
        assert_eq!(ack.pkid(), pkid, "{ack:?}");
        ack
    }
}
