//! Modbus TCP (Modbus Application Protocol V1.1b3 + Modbus Messaging on TCP/IP V1.0b).
//!
//! Our own decoder, written for hostile input: the MBAP header is checked before the body is
//! buffered (protocol id 0, length 2..=254), every number a peer sends goes through checked
//! arithmetic, and every public function code's request is validated against the limits of the
//! specification. A request is kept as a view on the original bytes, so an allowed request is
//! forwarded exactly as the client sent it.
//!
//! Outcomes are split the way the gateway must react to them:
//! - [`FrameError`]: the byte stream cannot be framed (bad MBAP header, a PDU too short for its
//!   function, a fixed-size PDU with extra bytes). The session is closed: after a framing error
//!   nobody knows where the next frame starts.
//! - [`Violation`]: a well-framed request that breaks the protocol's limits (quantity 0 or too
//!   large, byte count mismatch, address overflow). It is answered with the exception a device
//!   would send (0x03 or 0x02) and never forwarded.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod function;

pub use function::{Function, FunctionClass, PRESETS, preset};

use std::fmt;

/// MBAP header length: transaction id (2), protocol id (2), length (2), unit id (1).
pub const MBAP_LEN: usize = 7;
/// Largest Modbus TCP ADU: 7-byte MBAP + 253-byte PDU (spec §4.1: PDU ≤ 253 bytes).
pub const MAX_ADU_LEN: usize = 260;
/// The MBAP length field counts the unit id and the PDU: at least unit + function code.
pub const MIN_MBAP_LENGTH: u16 = 2;
/// Unit id (1) + the largest PDU (253).
pub const MAX_MBAP_LENGTH: u16 = 254;

/// The 7-byte Modbus Application Protocol header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mbap {
    pub transaction_id: u16,
    pub protocol_id: u16,
    /// Number of bytes that follow the length field (unit id + PDU).
    pub length: u16,
    pub unit_id: u8,
}

impl Mbap {
    /// Reads the header from the first 7 bytes, or `None` when fewer are buffered.
    pub fn peek(buf: &[u8]) -> Option<Mbap> {
        match buf {
            [t0, t1, p0, p1, l0, l1, unit, ..] => Some(Mbap {
                transaction_id: u16::from_be_bytes([*t0, *t1]),
                protocol_id: u16::from_be_bytes([*p0, *p1]),
                length: u16::from_be_bytes([*l0, *l1]),
                unit_id: *unit,
            }),
            _ => None,
        }
    }

    /// Total ADU size announced by this header.
    pub fn adu_len(&self) -> usize {
        // `length` is at most 254 once validated; 6 + u16::MAX still fits a usize.
        6usize.saturating_add(usize::from(self.length))
    }
}

/// The byte stream cannot be framed as Modbus TCP; the session must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("MBAP protocol id is {0:#06x}, Modbus requires 0")]
    ProtocolId(u16),
    #[error("MBAP length {0} outside 2..=254")]
    Length(u16),
    #[error("function {function:#04x} needs a PDU of {need} bytes, MBAP length gives {have}")]
    Truncated {
        function: u8,
        need: usize,
        have: usize,
    },
    #[error(
        "function {function:#04x} takes a PDU of exactly {expected} bytes, MBAP length gives {have}"
    )]
    LengthMismatch {
        function: u8,
        expected: usize,
        have: usize,
    },
    #[error("response function {got:#04x} does not answer request function {expected:#04x}")]
    FunctionMismatch { expected: u8, got: u8 },
}

/// Modbus exception codes (spec §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionCode {
    IllegalFunction = 0x01,
    IllegalDataAddress = 0x02,
    IllegalDataValue = 0x03,
    ServerDeviceFailure = 0x04,
    ServerDeviceBusy = 0x06,
    GatewayPathUnavailable = 0x0A,
    GatewayTargetFailedToRespond = 0x0B,
}

impl ExceptionCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// A well-framed request that breaks the protocol's limits. Answered with [`Violation::exception`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    #[error("quantity {quantity} outside 1..={max}")]
    Quantity { quantity: u16, max: u16 },
    #[error("byte count {byte_count} does not match quantity {quantity} (needs {needed})")]
    ByteCount {
        byte_count: u8,
        quantity: u16,
        needed: usize,
    },
    #[error("byte count {byte_count} but {present} data bytes present")]
    BytesPresent { byte_count: u8, present: usize },
    #[error("address {address} + quantity {quantity} runs past 65535")]
    AddressOverflow { address: u16, quantity: u16 },
    #[error("coil value {0:#06x} is neither ON (0xff00) nor OFF (0x0000)")]
    CoilValue(u16),
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Function code 0, an exception-space code (≥ 0x80), or an MEI type this gateway does not
    /// pass (everything but 0x0E Read Device Identification).
    #[error("{0}")]
    IllegalFunction(&'static str),
}

impl Violation {
    /// The exception a conforming device answers with (spec §6: 0x02 for an address range that
    /// does not exist, 0x03 for every malformed count or value).
    pub fn exception(&self) -> ExceptionCode {
        match self {
            Violation::AddressOverflow { .. } => ExceptionCode::IllegalDataAddress,
            Violation::IllegalFunction(_) => ExceptionCode::IllegalFunction,
            _ => ExceptionCode::IllegalDataValue,
        }
    }
}

/// Why a request frame was not turned into a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{violation}")]
    Violation {
        header: Mbap,
        function: u8,
        violation: Violation,
    },
}

/// Which data table a function reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Coils,
    DiscreteInputs,
    HoldingRegisters,
    InputRegisters,
    FifoQueue,
}

/// A contiguous block of a data table: `quantity` items from `address`.
/// `address + quantity ≤ 65536` holds for every span the decoder returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub address: u16,
    pub quantity: u16,
}

impl Span {
    /// The last address covered (inclusive).
    pub fn last(&self) -> u16 {
        // The decoder guarantees quantity ≥ 1 and address + quantity ≤ 65536.
        self.address.saturating_add(self.quantity.saturating_sub(1))
    }
}

/// What a request touches, as far as a policy needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The function addresses no data table (diagnostics, identification, vendor codes, file
    /// records).
    None,
    Read(Table, Span),
    Write(Table, Span),
    /// Function 23: one read and one write in a single transaction.
    ReadWrite {
        read: Span,
        write: Span,
    },
}

/// What a write puts into the device, for value bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written<'a> {
    Nothing,
    /// Function 5: one coil.
    Coil {
        address: u16,
        on: bool,
    },
    /// Function 15: `quantity` packed coil bits starting at `address`.
    Coils {
        address: u16,
        quantity: u16,
        bits: &'a [u8],
    },
    /// Function 6, 16 and the write half of 23: big-endian register values.
    Registers {
        address: u16,
        values: &'a [u8],
    },
    /// Function 22: `(current AND and_mask) OR (or_mask AND NOT and_mask)`.
    Mask {
        address: u16,
        and_mask: u16,
        or_mask: u16,
    },
}

impl Written<'_> {
    /// Register values written, with their addresses.
    pub fn registers(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        let (address, values): (u16, &[u8]) = match self {
            Written::Registers { address, values } => (*address, values),
            _ => (0, &[]),
        };
        values
            .chunks_exact(2)
            .zip(address..=u16::MAX)
            .map(|(v, a)| match v {
                [hi, lo] => (a, u16::from_be_bytes([*hi, *lo])),
                _ => (a, 0), // chunks_exact(2) only yields 2-byte chunks.
            })
    }

    /// Coil values written, with their addresses.
    pub fn coils(&self) -> impl Iterator<Item = (u16, bool)> + '_ {
        let (address, quantity, bits, single) = match self {
            Written::Coil { address, on } => (*address, 1u16, &[][..], Some(*on)),
            Written::Coils {
                address,
                quantity,
                bits,
            } => (*address, *quantity, *bits, None),
            _ => (0, 0, &[][..], None),
        };
        (0..quantity).map(move |i| {
            let on = single.unwrap_or_else(|| {
                let byte = bits.get(usize::from(i / 8)).copied().unwrap_or(0);
                byte & (1 << (i % 8)) != 0
            });
            (address.saturating_add(i), on)
        })
    }
}

/// A decoded request: a view on the original ADU bytes plus what the policy needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    pub header: Mbap,
    pub function: Function,
    pub access: Access,
    pub written: Written<'a>,
    /// Sub-function of 8 (diagnostics) or MEI type of 43, for audit and explain.
    pub sub_function: Option<u16>,
    adu: &'a [u8],
}

impl fmt::Debug for Request<'_> {
    // Sizes and ids, never the values written (they may be process secrets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("transaction_id", &self.header.transaction_id)
            .field("unit", &self.header.unit_id)
            .field("function", &self.function)
            .field("access", &self.access)
            .field("len", &self.adu.len())
            .finish()
    }
}

impl<'a> Request<'a> {
    /// The original bytes of the whole ADU, to forward unchanged.
    pub fn adu(&self) -> &'a [u8] {
        self.adu
    }

    pub fn unit(&self) -> u8 {
        self.header.unit_id
    }

    pub fn transaction_id(&self) -> u16 {
        self.header.transaction_id
    }

    /// Unit 0 is the broadcast address (Modbus over Serial Line §2.2, kept by gateways):
    /// anything but a read sent there reaches every device on the line behind a gateway
    /// (a write, a diagnostic such as "force listen only mode", a vendor code).
    pub fn is_broadcast(&self) -> bool {
        self.header.unit_id == 0 && self.function.class() != FunctionClass::Read
    }
}

/// Checks the MBAP header at the front of `buf` and says how long the frame is.
///
/// `Ok(None)`: fewer than 7 bytes are buffered. `Ok(Some(n))`: the frame is `n` bytes long (it may
/// not all be buffered yet; `n ≤ 260`). The caller never needs to buffer more than 260 bytes.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = Mbap::peek(buf) else {
        return Ok(None);
    };
    check_header(&header)?;
    Ok(Some(header.adu_len()))
}

fn check_header(header: &Mbap) -> Result<(), FrameError> {
    if header.protocol_id != 0 {
        return Err(FrameError::ProtocolId(header.protocol_id));
    }
    if !(MIN_MBAP_LENGTH..=MAX_MBAP_LENGTH).contains(&header.length) {
        return Err(FrameError::Length(header.length));
    }
    Ok(())
}

/// One complete frame and the bytes after it.
pub type FrameSplit<'a> = (&'a [u8], &'a [u8]);

/// Splits one complete frame off the front of `buf`.
///
/// `Ok(None)` means more bytes are needed; every strict prefix of a valid frame gives `Ok(None)`.
pub fn split_frame(buf: &[u8]) -> Result<Option<FrameSplit<'_>>, FrameError> {
    match frame_len(buf)? {
        Some(n) if buf.len() >= n => Ok(Some(buf.split_at(n))),
        _ => Ok(None),
    }
}

/// A bounded reader over a PDU body: it cannot run past the bytes it was given.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(*first)
    }

    fn u16(&mut self) -> Option<u16> {
        match self.rest {
            [hi, lo, rest @ ..] => {
                self.rest = rest;
                Some(u16::from_be_bytes([*hi, *lo]))
            }
            _ => None,
        }
    }

    fn remaining(&self) -> &'a [u8] {
        self.rest
    }
}

/// Decodes one complete request ADU (as returned by [`split_frame`]).
pub fn decode_request(adu: &[u8]) -> Result<Request<'_>, RequestError> {
    let header = Mbap::peek(adu).ok_or(FrameError::Length(0))?;
    check_header(&header)?;
    if adu.len() != header.adu_len() {
        return Err(FrameError::Length(header.length).into());
    }
    let pdu = adu.get(MBAP_LEN..).unwrap_or_default();
    let Some((&code, body)) = pdu.split_first() else {
        return Err(FrameError::Length(header.length).into());
    };
    let function = Function(code);
    let violation = |violation| RequestError::Violation {
        header,
        function: code,
        violation,
    };
    let fixed = |expected_body: usize| -> Result<(), RequestError> {
        let expected = expected_body.saturating_add(1);
        match body.len().cmp(&expected_body) {
            std::cmp::Ordering::Less => Err(FrameError::Truncated {
                function: code,
                need: expected,
                have: pdu.len(),
            }
            .into()),
            std::cmp::Ordering::Greater => Err(FrameError::LengthMismatch {
                function: code,
                expected,
                have: pdu.len(),
            }
            .into()),
            std::cmp::Ordering::Equal => Ok(()),
        }
    };
    let at_least = |min_body: usize| -> Result<(), RequestError> {
        if body.len() < min_body {
            Err(FrameError::Truncated {
                function: code,
                need: min_body.saturating_add(1),
                have: pdu.len(),
            }
            .into())
        } else {
            Ok(())
        }
    };
    let mut r = Reader { rest: body };
    let mut access = Access::None;
    let mut written = Written::Nothing;
    let mut sub_function = None;

    match code {
        // Read coils / discrete inputs / holding registers / input registers (§6.1–6.4).
        1..=4 => {
            fixed(4)?;
            let address = r.u16().unwrap_or(0);
            let quantity = r.u16().unwrap_or(0);
            let (table, max) = match code {
                1 => (Table::Coils, 2000),
                2 => (Table::DiscreteInputs, 2000),
                3 => (Table::HoldingRegisters, 125),
                _ => (Table::InputRegisters, 125),
            };
            let span = span(address, quantity, max).map_err(violation)?;
            access = Access::Read(table, span);
        }
        // Write single coil (§6.5): the value is 0xFF00 (ON) or 0x0000 (OFF), nothing else.
        5 => {
            fixed(4)?;
            let address = r.u16().unwrap_or(0);
            let value = r.u16().unwrap_or(0);
            let on = match value {
                0xFF00 => true,
                0x0000 => false,
                other => return Err(violation(Violation::CoilValue(other))),
            };
            access = Access::Write(
                Table::Coils,
                Span {
                    address,
                    quantity: 1,
                },
            );
            written = Written::Coil { address, on };
        }
        // Write single register (§6.6).
        6 => {
            fixed(4)?;
            let address = r.u16().unwrap_or(0);
            access = Access::Write(
                Table::HoldingRegisters,
                Span {
                    address,
                    quantity: 1,
                },
            );
            written = Written::Registers {
                address,
                values: r.remaining(),
            };
        }
        // Read exception status, get comm event counter/log, report server id: no data.
        7 | 11 | 12 | 17 => fixed(0)?,
        // Diagnostics (§6.8): sub-function + data; data is 2 bytes for every defined
        // sub-function but 0x0015 (Return Query Data echoes any length), so only a minimum.
        8 => {
            at_least(4)?;
            sub_function = r.u16();
            if body.len() % 2 != 0 {
                return Err(violation(Violation::Malformed("diagnostics data length")));
            }
        }
        // Write multiple coils (§6.11).
        15 => {
            at_least(5)?;
            let address = r.u16().unwrap_or(0);
            let quantity = r.u16().unwrap_or(0);
            let byte_count = r.u8().unwrap_or(0);
            let span = span(address, quantity, 1968).map_err(violation)?;
            let needed = usize::from(quantity.div_ceil(8));
            check_byte_count(byte_count, quantity, needed, r.remaining()).map_err(violation)?;
            access = Access::Write(Table::Coils, span);
            written = Written::Coils {
                address,
                quantity,
                bits: r.remaining(),
            };
        }
        // Write multiple registers (§6.12).
        16 => {
            at_least(5)?;
            let address = r.u16().unwrap_or(0);
            let quantity = r.u16().unwrap_or(0);
            let byte_count = r.u8().unwrap_or(0);
            let span = span(address, quantity, 123).map_err(violation)?;
            let needed = usize::from(quantity).saturating_mul(2);
            check_byte_count(byte_count, quantity, needed, r.remaining()).map_err(violation)?;
            access = Access::Write(Table::HoldingRegisters, span);
            written = Written::Registers {
                address,
                values: r.remaining(),
            };
        }
        // Read file record (§6.14): byte count 0x07..=0xF5, 7-byte sub-requests.
        20 => {
            at_least(1)?;
            let byte_count = r.u8().unwrap_or(0);
            let subs = r.remaining();
            if usize::from(byte_count) != subs.len() {
                return Err(violation(Violation::BytesPresent {
                    byte_count,
                    present: subs.len(),
                }));
            }
            if !(0x07..=0xF5).contains(&byte_count) || subs.len() % 7 != 0 {
                return Err(violation(Violation::Malformed(
                    "read file record byte count",
                )));
            }
            for sub in subs.chunks_exact(7) {
                check_file_sub_request(sub).map_err(violation)?;
            }
        }
        // Write file record (§6.15): byte count 0x09..=0xFB, sub-requests with data.
        21 => {
            at_least(1)?;
            let byte_count = r.u8().unwrap_or(0);
            let mut subs = r.remaining();
            if usize::from(byte_count) != subs.len() {
                return Err(violation(Violation::BytesPresent {
                    byte_count,
                    present: subs.len(),
                }));
            }
            if !(0x09..=0xFB).contains(&byte_count) {
                return Err(violation(Violation::Malformed(
                    "write file record byte count",
                )));
            }
            while !subs.is_empty() {
                let Some((head, rest)) = subs.split_at_checked(7) else {
                    return Err(violation(Violation::Malformed("write file sub-request")));
                };
                check_file_sub_request(head).map_err(violation)?;
                let words = match head {
                    [_, _, _, _, _, hi, lo] => u16::from_be_bytes([*hi, *lo]),
                    _ => 0,
                };
                let data_len = usize::from(words).saturating_mul(2);
                let Some((_, after)) = rest.split_at_checked(data_len) else {
                    return Err(violation(Violation::Malformed("write file record data")));
                };
                subs = after;
            }
        }
        // Mask write register (§6.16).
        22 => {
            fixed(6)?;
            let address = r.u16().unwrap_or(0);
            let and_mask = r.u16().unwrap_or(0);
            let or_mask = r.u16().unwrap_or(0);
            access = Access::Write(
                Table::HoldingRegisters,
                Span {
                    address,
                    quantity: 1,
                },
            );
            written = Written::Mask {
                address,
                and_mask,
                or_mask,
            };
        }
        // Read/write multiple registers (§6.17): read 1..=125, write 1..=121.
        23 => {
            at_least(9)?;
            let read_address = r.u16().unwrap_or(0);
            let read_quantity = r.u16().unwrap_or(0);
            let write_address = r.u16().unwrap_or(0);
            let write_quantity = r.u16().unwrap_or(0);
            let byte_count = r.u8().unwrap_or(0);
            let read = span(read_address, read_quantity, 125).map_err(violation)?;
            let write = span(write_address, write_quantity, 121).map_err(violation)?;
            let needed = usize::from(write_quantity).saturating_mul(2);
            check_byte_count(byte_count, write_quantity, needed, r.remaining())
                .map_err(violation)?;
            access = Access::ReadWrite { read, write };
            written = Written::Registers {
                address: write_address,
                values: r.remaining(),
            };
        }
        // Read FIFO queue (§6.18): the pointer address; the device returns up to 31 registers.
        24 => {
            fixed(2)?;
            let address = r.u16().unwrap_or(0);
            access = Access::Read(
                Table::FifoQueue,
                Span {
                    address,
                    quantity: 1,
                },
            );
        }
        // Encapsulated interface transport (§6.19–6.21). Only MEI 0x0E, Read Device
        // Identification, passes: 0x0D tunnels CANopen requests (which can write a device's
        // object dictionary) that no rule here can constrain, and the rest are reserved.
        43 => {
            at_least(1)?;
            let mei = r.u8().unwrap_or(0);
            sub_function = Some(u16::from(mei));
            if mei != 0x0E {
                return Err(violation(Violation::IllegalFunction(
                    "MEI type other than 0x0E (Read Device Identification)",
                )));
            }
            // Read device id code 1..=4, object id.
            fixed(3)?;
            let code = r.u8().unwrap_or(0);
            if !(1..=4).contains(&code) {
                return Err(violation(Violation::Malformed("read device id code")));
            }
        }
        // Function code 0 does not exist and 0x80.. is the exception space of responses.
        0 | 0x80..=0xFF => {
            return Err(violation(Violation::IllegalFunction(
                "function code 0 or ≥ 0x80 in a request",
            )));
        }
        // Anything else (vendor codes such as 90, reserved codes, exception-space codes) is
        // framed by the MBAP length alone; the policy denies it unless a rule names it.
        _ => {}
    }

    Ok(Request {
        header,
        function,
        access,
        written,
        sub_function,
        adu,
    })
}

fn span(address: u16, quantity: u16, max: u16) -> Result<Span, Violation> {
    if quantity == 0 || quantity > max {
        return Err(Violation::Quantity { quantity, max });
    }
    if u32::from(address).saturating_add(u32::from(quantity)) > 0x1_0000 {
        return Err(Violation::AddressOverflow { address, quantity });
    }
    Ok(Span { address, quantity })
}

fn check_byte_count(
    byte_count: u8,
    quantity: u16,
    needed: usize,
    data: &[u8],
) -> Result<(), Violation> {
    if usize::from(byte_count) != needed {
        return Err(Violation::ByteCount {
            byte_count,
            quantity,
            needed,
        });
    }
    if data.len() != needed {
        return Err(Violation::BytesPresent {
            byte_count,
            present: data.len(),
        });
    }
    Ok(())
}

/// A file sub-request: reference type 6, file number, record number ≤ 0x270F, record length.
fn check_file_sub_request(sub: &[u8]) -> Result<(), Violation> {
    match sub {
        [6, _, _, r0, r1, ..] if u16::from_be_bytes([*r0, *r1]) <= 0x270F => Ok(()),
        _ => Err(Violation::Malformed("file sub-request")),
    }
}

/// A response ADU from the device, checked just enough to relay it safely.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub header: Mbap,
    /// The function code as sent (with bit 7 set for an exception).
    pub function: u8,
    adu: &'a [u8],
}

impl<'a> Response<'a> {
    pub fn adu(&self) -> &'a [u8] {
        self.adu
    }

    pub fn transaction_id(&self) -> u16 {
        self.header.transaction_id
    }

    pub fn exception(&self) -> Option<u8> {
        if self.function & 0x80 != 0 {
            self.adu.get(MBAP_LEN.saturating_add(1)).copied()
        } else {
            None
        }
    }

    /// Whether this answers a request with `function`: the same code, or the code with bit 7
    /// set (an exception response).
    pub fn answers(&self, function: Function) -> Result<(), FrameError> {
        if self.function & 0x7F == function.0 & 0x7F {
            Ok(())
        } else {
            Err(FrameError::FunctionMismatch {
                expected: function.0,
                got: self.function,
            })
        }
    }
}

/// Decodes one complete response ADU (as returned by [`split_frame`]).
pub fn decode_response(adu: &[u8]) -> Result<Response<'_>, FrameError> {
    let header = Mbap::peek(adu).ok_or(FrameError::Length(0))?;
    check_header(&header)?;
    if adu.len() != header.adu_len() {
        return Err(FrameError::Length(header.length));
    }
    let function = adu
        .get(MBAP_LEN)
        .copied()
        .ok_or(FrameError::Length(header.length))?;
    if function & 0x80 != 0 && adu.len() != MBAP_LEN.saturating_add(2) {
        return Err(FrameError::LengthMismatch {
            function,
            expected: 2,
            have: adu.len().saturating_sub(MBAP_LEN),
        });
    }
    Ok(Response {
        header,
        function,
        adu,
    })
}

/// Whether `response` answers `request` (both complete ADUs): the same transaction id, the
/// request's function (or its exception), and — for a normal response — the byte count the
/// request's quantity implies, or the echo of the request's address and quantity (spec §6).
/// A response that fails this is not the answer to this request, whatever its transaction id.
pub fn response_answers(request: &[u8], response: &[u8]) -> bool {
    let (Some(req), Some(resp)) = (Mbap::peek(request), Mbap::peek(response)) else {
        return false;
    };
    let req_pdu = request.get(MBAP_LEN..).unwrap_or_default();
    let resp_pdu = response.get(MBAP_LEN..).unwrap_or_default();
    let (Some(&code), Some(&answer)) = (req_pdu.first(), resp_pdu.first()) else {
        return false;
    };
    if req.transaction_id != resp.transaction_id || answer & 0x7F != code {
        return false;
    }
    if answer & 0x80 != 0 {
        return resp_pdu.len() == 2;
    }
    let word = |pdu: &[u8], at: usize| match (pdu.get(at), pdu.get(at.saturating_add(1))) {
        (Some(hi), Some(lo)) => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    };
    let byte_count = resp_pdu.get(1).map(|b| usize::from(*b));
    let data_len = resp_pdu.len().saturating_sub(2);
    match code {
        // Reads: byte count from the quantity, and exactly that many bytes.
        1 | 2 => word(req_pdu, 3).is_some_and(|q| {
            let n = usize::from(q.div_ceil(8));
            byte_count == Some(n) && data_len == n
        }),
        3 | 4 => word(req_pdu, 3).is_some_and(|q| {
            let n = usize::from(q).saturating_mul(2);
            byte_count == Some(n) && data_len == n
        }),
        23 => word(req_pdu, 3).is_some_and(|q| {
            let n = usize::from(q).saturating_mul(2);
            byte_count == Some(n) && data_len == n
        }),
        // Single writes and mask write echo the request.
        5 | 6 | 22 => resp_pdu == req_pdu,
        // Multiple writes echo address and quantity.
        15 | 16 => resp_pdu.len() == 5 && resp_pdu.get(1..5) == req_pdu.get(1..5),
        _ => true,
    }
}

/// Length of an exception response ADU.
pub const EXCEPTION_LEN: usize = 9;

/// Builds the exception response a device sends for a request with this header and function
/// (spec §7): the request's transaction id and unit, function | 0x80, the exception code.
pub fn exception_response(header: &Mbap, function: u8, code: ExceptionCode) -> [u8; EXCEPTION_LEN] {
    let [t0, t1] = header.transaction_id.to_be_bytes();
    [
        t0,
        t1,
        0,
        0,
        0,
        3,
        header.unit_id,
        function | 0x80,
        code.code(),
    ]
}

#[cfg(test)]
mod tests;
