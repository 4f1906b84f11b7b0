//! A simulated PLC: a real Modbus TCP server (tokio-modbus's server) with a small process image,
//! for `ztgate demo`, the integration tests and the load benchmark.
//!
//! The image matches the fixtures' pymodbus device: for addresses 0..=999, holding register
//! `i` = `i`, input register `i` = 1000 + `i`, coils OFF, discrete input `i` = `i % 2`. Any
//! access outside 0..=999 is answered with exception 0x02, an unknown function with 0x01.

use std::future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};

/// Size of each table of the process image.
pub const TABLE_SIZE: usize = 1000;

/// The process image.
#[derive(Debug, Clone)]
pub struct Image {
    pub coils: Vec<bool>,
    pub discrete_inputs: Vec<bool>,
    pub holding: Vec<u16>,
    pub input: Vec<u16>,
}

impl Default for Image {
    fn default() -> Image {
        Image {
            coils: vec![false; TABLE_SIZE],
            discrete_inputs: (0..TABLE_SIZE).map(|i| i % 2 == 1).collect(),
            holding: (0..TABLE_SIZE as u16).collect(),
            input: (0..TABLE_SIZE as u16).map(|i| 1000 + i).collect(),
        }
    }
}

fn range(address: u16, quantity: usize) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let start = usize::from(address);
    let end = start + quantity;
    if quantity == 0 || end > TABLE_SIZE {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(start..end)
}

fn read<T: Copy>(table: &[T], address: u16, quantity: u16) -> Result<Vec<T>, ExceptionCode> {
    Ok(table[range(address, usize::from(quantity))?].to_vec())
}

fn write<T: Copy>(table: &mut [T], address: u16, values: &[T]) -> Result<(), ExceptionCode> {
    table[range(address, values.len())?].copy_from_slice(values);
    Ok(())
}

impl Image {
    fn apply(&mut self, request: Request<'_>) -> Result<Response, ExceptionCode> {
        use Request as Q;
        use Response as R;
        Ok(match request {
            Q::ReadCoils(a, q) => R::ReadCoils(read(&self.coils, a, q)?),
            Q::ReadDiscreteInputs(a, q) => {
                R::ReadDiscreteInputs(read(&self.discrete_inputs, a, q)?)
            }
            Q::ReadHoldingRegisters(a, q) => R::ReadHoldingRegisters(read(&self.holding, a, q)?),
            Q::ReadInputRegisters(a, q) => R::ReadInputRegisters(read(&self.input, a, q)?),
            Q::WriteSingleCoil(a, v) => {
                write(&mut self.coils, a, &[v])?;
                R::WriteSingleCoil(a, v)
            }
            Q::WriteMultipleCoils(a, v) => {
                write(&mut self.coils, a, &v)?;
                R::WriteMultipleCoils(a, v.len() as u16)
            }
            Q::WriteSingleRegister(a, v) => {
                write(&mut self.holding, a, &[v])?;
                R::WriteSingleRegister(a, v)
            }
            Q::WriteMultipleRegisters(a, v) => {
                write(&mut self.holding, a, &v)?;
                R::WriteMultipleRegisters(a, v.len() as u16)
            }
            Q::MaskWriteRegister(a, and, or) => {
                let r = range(a, 1)?;
                let current = self.holding[r.start];
                self.holding[r.start] = (current & and) | (or & !and);
                R::MaskWriteRegister(a, and, or)
            }
            Q::ReadWriteMultipleRegisters(ra, rq, wa, v) => {
                range(ra, usize::from(rq))?;
                write(&mut self.holding, wa, &v)?;
                R::ReadWriteMultipleRegisters(read(&self.holding, ra, rq)?)
            }
            Q::ReportServerId => R::ReportServerId(1, true, b"ztgate simulated PLC".to_vec()),
            _ => return Err(ExceptionCode::IllegalFunction),
        })
    }
}

#[derive(Clone)]
struct PlcService {
    image: Arc<Mutex<Image>>,
    requests: Arc<AtomicU64>,
}

impl tokio_modbus::server::Service for PlcService {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut image = self.image.lock().unwrap_or_else(PoisonError::into_inner);
        future::ready(image.apply(req.request))
    }
}

/// A running simulated PLC.
pub struct Plc {
    pub addr: SocketAddr,
    image: Arc<Mutex<Image>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Plc {
    /// Binds `bind` (use port 0) and serves until dropped.
    pub async fn start(bind: SocketAddr) -> std::io::Result<Plc> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let image = Arc::new(Mutex::new(Image::default()));
        let requests = Arc::new(AtomicU64::new(0));
        let service = PlcService {
            image: image.clone(),
            requests: requests.clone(),
        };
        let task = tokio::spawn(async move {
            let server = Server::new(listener);
            let on_connected = |stream, socket_addr| {
                let service = service.clone();
                async move {
                    accept_tcp_connection(stream, socket_addr, move |_| Ok(Some(service.clone())))
                }
            };
            let on_error =
                |e: std::io::Error| tracing::debug!(error = %e, "simulated PLC connection ended");
            if let Err(e) = server.serve(&on_connected, on_error).await {
                tracing::warn!(error = %e, "simulated PLC stopped");
            }
        });
        Ok(Plc {
            addr,
            image,
            requests,
            task,
        })
    }

    /// A copy of the process image (to check what a write did, or did not do).
    pub fn image(&self) -> Image {
        self.image
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Requests the PLC has decoded and answered.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn holding(&self, address: usize) -> Option<u16> {
        self.image().holding.get(address).copied()
    }
}

impl Drop for Plc {
    fn drop(&mut self) {
        self.task.abort();
    }
}
