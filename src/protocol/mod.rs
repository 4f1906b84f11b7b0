//! Sans-IO protocol codecs: bytes in, typed frames out, bounded sizes, refusal builders.
//!
//! Nothing here does IO, reads a clock or knows about tokio. Each codec reports one of three
//! outcomes for a buffer: it needs more bytes (`Ok(None)`), a frame, or an error that says why
//! the bytes can never become a valid frame.

pub mod modbus;
pub mod mqtt;
