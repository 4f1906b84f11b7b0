//! MQTT 3.1.1 (OASIS Standard, 29 October 2014) and MQTT 5.0 (OASIS Standard, 7 March 2019).
//!
//! Our own sans-IO decoder, written for hostile input. [`packet_len`] frames a byte stream from
//! the fixed header alone and refuses an oversized packet as soon as its remaining length is
//! known, before any of the body is buffered. [`decode_connect`] reads the first packet of a
//! session (it fixes the protocol version), [`decode`] every packet after it, in one direction.
//! Every length a peer sends goes through checked arithmetic and every string is checked as
//! the specification's UTF-8 (no U+0000). A decoded packet is a view on the original bytes, so
//! an allowed packet is forwarded exactly as the peer sent it; the few rewrites a gateway needs
//! ([`Connect::with_client_id`], [`Publish::with_topic`], [`Subscribe::rebuild`],
//! [`connack_with_limits`]) keep every other byte identical.
//!
//! Errors are split by the reason code a v5 peer would get ([`Error::reason_code`]): a packet
//! too large (0x95), malformed (0x81), a protocol error (0x82) or an unsupported protocol
//! version (0x84). Every one of them ends the session: after a malformed packet nobody knows
//! what the peer meant.
//!
//! Strictness beyond the letter of 3.1.1, applied to both versions: a remaining length must be
//! minimally encoded (MQTT 5.0 §1.5.5, [MQTT-1.5.5-1]); reason codes must be ones the
//! specification defines for that packet.

#![deny(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

mod build;
mod properties;
#[cfg(test)]
mod tests;

use std::fmt;

pub use build::{PINGRESP, ack, connack, connack_with_limits, disconnect, suback};
use properties::{Ctx, Value};

/// Largest remaining length a 4-byte variable byte integer can carry.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The protocol version a session speaks, fixed by its CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Version {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The control packet type: the high nibble of the first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketType {
    Connect = 1,
    Connack,
    Publish,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    Pingreq,
    Pingresp,
    Disconnect,
    Auth,
}

impl PacketType {
    /// The type in the high nibble of a fixed header's first byte (flags are not checked here);
    /// `None` for the reserved type 0.
    pub fn from_byte(first_byte: u8) -> Option<PacketType> {
        use PacketType::*;
        Some(match first_byte >> 4 {
            1 => Connect,
            2 => Connack,
            3 => Publish,
            4 => Puback,
            5 => Pubrec,
            6 => Pubrel,
            7 => Pubcomp,
            8 => Subscribe,
            9 => Suback,
            10 => Unsubscribe,
            11 => Unsuback,
            12 => Pingreq,
            13 => Pingresp,
            14 => Disconnect,
            15 => Auth,
            _ => return None,
        })
    }

    /// The specification's name, upper case ("PUBLISH").
    pub fn name(self) -> &'static str {
        use PacketType::*;
        match self {
            Connect => "CONNECT",
            Connack => "CONNACK",
            Publish => "PUBLISH",
            Puback => "PUBACK",
            Pubrec => "PUBREC",
            Pubrel => "PUBREL",
            Pubcomp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            Suback => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            Unsuback => "UNSUBACK",
            Pingreq => "PINGREQ",
            Pingresp => "PINGRESP",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }

    /// The low nibble the specification fixes for this type (PUBLISH carries its own flags and
    /// is checked separately).
    fn required_flags(self) -> u8 {
        match self {
            PacketType::Pubrel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        }
    }
}

/// Why bytes are not an acceptable MQTT packet. Every error ends the session.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge { size: usize, max: usize },
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("unsupported protocol version {0} (ztgate speaks MQTT 3.1.1 and 5.0)")]
    UnsupportedVersion(u8),
}

impl Error {
    /// The MQTT 5.0 reason code for this error (CONNACK or DISCONNECT).
    pub fn reason_code(&self) -> u8 {
        match self {
            Error::TooLarge { .. } => 0x95,
            Error::Malformed(_) => 0x81,
            Error::Protocol(_) => 0x82,
            Error::UnsupportedVersion(_) => 0x84,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Byte offsets inside a packet (`start..end`), kept instead of slices where a rewrite needs
/// to know where a field sits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Span {
    start: usize,
    end: usize,
}

/// Per byte of a variable byte integer: its multiplier and the length so far.
const VARINT_STEPS: [(usize, usize); 4] = [(1, 1), (128, 2), (16_384, 3), (2_097_152, 4)];

/// Reads a variable byte integer from the front of `buf`: `Ok(None)` when it is not complete,
/// else `(value, bytes used)`. More than 4 bytes, or a non-minimal encoding, is malformed.
fn read_varint(
    buf: &[u8],
    too_long: &'static str,
    not_minimal: &'static str,
) -> Result<Option<(usize, usize)>, Error> {
    let mut value = 0usize;
    for (&byte, (multiplier, used)) in buf.iter().zip(VARINT_STEPS) {
        let digit = usize::from(byte & 0x7F);
        // At most 127 * 2_097_152 + 2_097_151: no overflow on any platform Rust supports.
        value = digit
            .checked_mul(multiplier)
            .and_then(|d| d.checked_add(value))
            .ok_or(Error::Malformed(too_long))?;
        if byte & 0x80 == 0 {
            if used > 1 && digit == 0 {
                return Err(Error::Malformed(not_minimal));
            }
            return Ok(Some((value, used)));
        }
    }
    if buf.len() >= VARINT_STEPS.len() {
        Err(Error::Malformed(too_long))
    } else {
        Ok(None)
    }
}

/// The fixed header at the front of `buf`: `(fixed header length, remaining length)`, or
/// `Ok(None)` while the remaining length is incomplete.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    if first >> 4 == 0 {
        return Err(Error::Malformed("packet type 0 is reserved"));
    }
    let Some((remaining, used)) = read_varint(
        rest,
        "remaining length longer than 4 bytes",
        "remaining length not minimally encoded",
    )?
    else {
        return Ok(None);
    };
    Ok(Some((used.saturating_add(1), remaining)))
}

/// Frames one packet from the fixed header alone.
///
/// `Ok(None)`: more bytes are needed (every strict prefix of a valid packet gives `Ok(None)`).
/// `Ok(Some(n))`: `buf.len() >= n` and the packet is `buf[..n]` (fixed header included).
/// Errors: packet type 0, a remaining length longer than 4 bytes or not minimally encoded, and
/// a total size above `max_packet_size` ([`Error::TooLarge`], decided as soon as the remaining
/// length is complete, never waiting for the body). A caller therefore never buffers more
/// than `max_packet_size` bytes (plus at most 4 bytes of an incomplete header).
pub fn packet_len(buf: &[u8], max_packet_size: usize) -> Result<Option<usize>, Error> {
    let Some((header, remaining)) = fixed_header(buf)? else {
        return Ok(None);
    };
    // header ≤ 5 and remaining ≤ MAX_REMAINING_LENGTH: no overflow.
    let size = header.saturating_add(remaining);
    if size > max_packet_size {
        return Err(Error::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok((buf.len() >= size).then_some(size))
}

/// Checks that `packet` is exactly one packet: `(first byte, start of the variable header)`.
fn whole_packet(packet: &[u8]) -> Result<(u8, usize), Error> {
    let first = packet
        .first()
        .copied()
        .ok_or(Error::Malformed("empty packet"))?;
    let Some((header, remaining)) = fixed_header(packet)? else {
        return Err(Error::Malformed("packet shorter than its fixed header"));
    };
    if header.checked_add(remaining) != Some(packet.len()) {
        return Err(Error::Malformed(
            "remaining length does not match the packet size",
        ));
    }
    Ok((first, header))
}

// ---------------------------------------------------------------------------------------------
// Field reader
// ---------------------------------------------------------------------------------------------

/// The two things that can be wrong with a length-prefixed field, named in its messages.
struct Field {
    short: &'static str,
    bad: &'static str,
}

macro_rules! field {
    ($name:literal) => {
        Field {
            short: concat!("remaining length too short for the ", $name),
            bad: concat!("invalid UTF-8 or U+0000 in ", $name),
        }
    };
}
use field;

const PACKET_ID: Field = field!("packet identifier");
const PROPERTIES: Field = field!("properties");

/// A bounded reader over `buf[pos..end]`; positions are offsets into the whole packet.
#[derive(Clone)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader {
            buf,
            pos,
            end: buf.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    fn take(&mut self, n: usize, field: &Field) -> Result<&'a [u8], Error> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.end)
            .ok_or(Error::Malformed(field.short))?;
        let bytes = self
            .buf
            .get(self.pos..end)
            .ok_or(Error::Malformed(field.short))?;
        self.pos = end;
        Ok(bytes)
    }

    fn u8(&mut self, field: &Field) -> Result<u8, Error> {
        match self.take(1, field)? {
            [b] => Ok(*b),
            _ => Err(Error::Malformed(field.short)),
        }
    }

    fn u16(&mut self, field: &Field) -> Result<u16, Error> {
        match self.take(2, field)? {
            [a, b] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(Error::Malformed(field.short)),
        }
    }

    fn u32(&mut self, field: &Field) -> Result<u32, Error> {
        match self.take(4, field)? {
            [a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => Err(Error::Malformed(field.short)),
        }
    }

    /// A variable byte integer inside the packet (property length, subscription identifier).
    fn varint(&mut self, field: &Field) -> Result<usize, Error> {
        let rest = self.buf.get(self.pos..self.end).unwrap_or_default();
        let (value, used) = read_varint(
            rest,
            "variable byte integer longer than 4 bytes",
            "variable byte integer not minimally encoded",
        )?
        .ok_or(Error::Malformed(field.short))?;
        self.take(used, field)?;
        Ok(value)
    }

    /// Binary data: a 2-byte length, then that many bytes.
    fn binary(&mut self, field: &Field) -> Result<&'a [u8], Error> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    /// A UTF-8 encoded string (§1.5.4): valid UTF-8 without U+0000.
    fn utf8(&mut self, field: &Field) -> Result<&'a str, Error> {
        let bytes = self.binary(field)?;
        mqtt_str(bytes).ok_or(Error::Malformed(field.bad))
    }

    /// A non-zero packet identifier.
    fn packet_id(&mut self) -> Result<u16, Error> {
        match self.u16(&PACKET_ID)? {
            0 => Err(Error::Protocol("packet identifier 0")),
            id => Ok(id),
        }
    }

    /// Everything left, consumed.
    fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..self.end).unwrap_or_default();
        self.pos = self.end;
        rest
    }

    /// A reader over the next `len` bytes, consumed from this one.
    fn sub(&mut self, len: usize, field: &Field) -> Result<Reader<'a>, Error> {
        let start = self.pos;
        self.take(len, field)?;
        Ok(Reader {
            buf: self.buf,
            pos: start,
            end: self.pos,
        })
    }
}

/// The bytes as an MQTT UTF-8 string: valid UTF-8 (which excludes surrogates) and no U+0000.
fn mqtt_str(bytes: &[u8]) -> Option<&str> {
    if bytes.contains(&0) {
        return None;
    }
    std::str::from_utf8(bytes).ok()
}

// ---------------------------------------------------------------------------------------------
// Topics
// ---------------------------------------------------------------------------------------------

/// A topic name a PUBLISH (or a will) may carry: non-empty, no wildcard `+`/`#`, no U+0000,
/// at most 65535 bytes.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= usize::from(u16::MAX)
        && !topic.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// A topic filter a SUBSCRIBE or UNSUBSCRIBE may carry: non-empty, at most 65535 bytes, no
/// U+0000, `#` only as the whole last level, `+` only as a whole level.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if last => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// `$share/group/filter` (an MQTT 5.0 shared subscription) → `Some(("group", "filter"))`.
/// `None` when `filter` does not start with `$share/`, the share name is empty or contains
/// `+`/`#`, or nothing follows it.
pub fn split_shared(filter: &str) -> Option<(&str, &str)> {
    let rest = filter.strip_prefix("$share/")?;
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    Some((group, inner))
}

/// Checks a filter as SUBSCRIBE/UNSUBSCRIBE carry it; `Ok(true)` for a V5 shared subscription.
fn check_filter(filter: &str, version: Version) -> Result<bool, Error> {
    if version == Version::V5 && filter.starts_with("$share/") {
        let (_, inner) =
            split_shared(filter).ok_or(Error::Protocol("invalid shared subscription name"))?;
        if !valid_topic_filter(inner) {
            return Err(Error::Malformed("invalid topic filter"));
        }
        return Ok(true);
    }
    if !valid_topic_filter(filter) {
        return Err(Error::Malformed("invalid topic filter"));
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

/// The CONNECT properties a gateway needs (MQTT 5.0 §3.1.2.11); all `None` in 3.1.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub has_authentication_method: bool,
}

/// The will message of a CONNECT (its payload itself is not kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub qos: QoS,
    pub retain: bool,
    pub payload_len: usize,
    /// Bytes of the v5 will properties, without their length field (0 in 3.1.1).
    pub properties_len: usize,
}

/// The content of a property section that took `total` bytes with its length varint.
fn property_content(total: usize) -> usize {
    (1..=4usize)
        .filter_map(|n| total.checked_sub(n))
        .find(|content| {
            let width = match *content {
                0..=127 => 1,
                128..=16_383 => 2,
                16_384..=2_097_151 => 3,
                _ => 4,
            };
            content.checked_add(width) == Some(total)
        })
        .unwrap_or(0)
}

/// A decoded CONNECT: a view on the original bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    pub version: Version,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    pub has_password: bool,
    pub will: Option<Will<'a>>,
    pub properties: ConnectProperties,
    packet: &'a [u8],
    /// Start of the variable header.
    body: usize,
    /// The client id with its 2-byte length.
    client_id_span: Span,
}

impl fmt::Debug for Connect<'_> {
    // Never the password; the will payload is not kept.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("version", &self.version)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("has_password", &self.has_password)
            .field("will", &self.will)
            .field("properties", &self.properties)
            .field("len", &self.packet.len())
            .finish()
    }
}

impl<'a> Connect<'a> {
    /// The original bytes of the whole packet, to forward unchanged.
    pub fn packet(&self) -> &'a [u8] {
        self.packet
    }

    /// The same CONNECT with the client id replaced, every other byte identical (the remaining
    /// length re-encoded). Errors: an id longer than 65535 bytes or containing U+0000, or a
    /// result above [`MAX_REMAINING_LENGTH`].
    pub fn with_client_id(&self, id: &str) -> Result<Vec<u8>, Error> {
        if id.contains('\0') {
            return Err(Error::Malformed("U+0000 in the new client identifier"));
        }
        build::replace_string(self.packet, self.body, self.client_id_span, id)
    }
}

const PROTOCOL_NAME: Field = field!("protocol name");
const CONNECT_HEADER: Field = field!("CONNECT variable header");
const CLIENT_ID: Field = field!("client identifier");
const WILL_TOPIC: Field = field!("will topic");
const WILL_PAYLOAD: Field = field!("will payload");
const USERNAME: Field = field!("user name");
const PASSWORD: Field = field!("password");

/// Decodes the first packet of a session. `packet` is one whole packet (as delimited by
/// [`packet_len`]). Anything but CONNECT is a protocol error.
pub fn decode_connect(packet: &[u8]) -> Result<Connect<'_>, Error> {
    let (first, body) = whole_packet(packet)?;
    if PacketType::from_byte(first) != Some(PacketType::Connect) {
        return Err(Error::Protocol("first packet is not CONNECT"));
    }
    if first & 0x0F != 0 {
        return Err(Error::Malformed("invalid fixed-header flags in CONNECT"));
    }
    let mut r = Reader::new(packet, body);
    let name = r.binary(&PROTOCOL_NAME)?;
    let level = r.u8(&CONNECT_HEADER)?;
    let version = match (name, level) {
        (b"MQTT", 4) => Version::V311,
        (b"MQTT", 5) => Version::V5,
        _ => return Err(Error::UnsupportedVersion(level)),
    };
    let flags = r.u8(&CONNECT_HEADER)?;
    if flags & 0x01 != 0 {
        return Err(Error::Malformed("reserved flag set in CONNECT"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_u8((flags >> 3) & 0x03).ok_or(Error::Malformed("will QoS 3"))?;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(Error::Malformed(
            "will QoS or will retain set without the will flag",
        ));
    }
    if version == Version::V311 && has_password && !has_username {
        return Err(Error::Malformed(
            "password flag without user name flag in an MQTT 3.1.1 CONNECT",
        ));
    }
    let keep_alive = r.u16(&CONNECT_HEADER)?;

    let mut properties = ConnectProperties::default();
    if version == Version::V5 {
        let mut has_auth_data = false;
        properties::parse(&mut r, Ctx::Connect, |id, value, _| {
            match (id, value) {
                (properties::SESSION_EXPIRY_INTERVAL, Value::Four(v)) => {
                    properties.session_expiry_interval = Some(v);
                }
                (properties::RECEIVE_MAXIMUM, Value::Two(v)) => {
                    properties.receive_maximum = Some(v);
                }
                (properties::MAXIMUM_PACKET_SIZE, Value::Four(v)) => {
                    properties.maximum_packet_size = Some(v);
                }
                (properties::TOPIC_ALIAS_MAXIMUM, Value::Two(v)) => {
                    properties.topic_alias_maximum = Some(v);
                }
                (properties::AUTHENTICATION_METHOD, _) => {
                    properties.has_authentication_method = true;
                }
                (properties::AUTHENTICATION_DATA, _) => has_auth_data = true,
                _ => {}
            }
            Ok(())
        })?;
        if has_auth_data && !properties.has_authentication_method {
            return Err(Error::Protocol(
                "authentication data without an authentication method",
            ));
        }
    }

    let id_start = r.pos;
    let client_id = r.utf8(&CLIENT_ID)?;
    let client_id_span = Span {
        start: id_start,
        end: r.pos,
    };

    let will = if will_flag {
        let properties_start = r.pos;
        if version == Version::V5 {
            properties::parse(&mut r, Ctx::Will, |_, _, _| Ok(()))?;
        }
        let properties_len = property_content(r.pos.saturating_sub(properties_start));
        let topic = r.utf8(&WILL_TOPIC)?;
        if !valid_topic_name(topic) {
            return Err(Error::Malformed("invalid will topic"));
        }
        let payload = r.binary(&WILL_PAYLOAD)?;
        Some(Will {
            topic,
            qos: will_qos,
            retain: will_retain,
            payload_len: payload.len(),
            properties_len,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.utf8(&USERNAME)?)
    } else {
        None
    };
    if has_password {
        r.binary(&PASSWORD)?;
    }
    if !r.is_empty() {
        return Err(Error::Malformed("trailing bytes after the CONNECT payload"));
    }
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        client_id,
        username,
        has_password,
        will,
        properties,
        packet,
        body,
        client_id_span,
    })
}

// ---------------------------------------------------------------------------------------------
// Packets after CONNECT
// ---------------------------------------------------------------------------------------------

/// Any packet after CONNECT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Connack(Connack),
    Publish(Publish<'a>),
    Puback(Ack),
    Pubrec(Ack),
    Pubrel(Ack),
    Pubcomp(Ack),
    Subscribe(Subscribe<'a>),
    Suback(Suback<'a>),
    Unsubscribe(Unsubscribe<'a>),
    /// In 3.1.1 `reason_codes` is empty.
    Unsuback(Suback<'a>),
    Pingreq,
    Pingresp,
    /// `reason` is 0 when absent and in 3.1.1.
    Disconnect {
        reason: u8,
    },
    Auth {
        reason: u8,
    },
}

impl Packet<'_> {
    /// The packet's type.
    pub fn kind(&self) -> PacketType {
        match self {
            Packet::Connack(_) => PacketType::Connack,
            Packet::Publish(_) => PacketType::Publish,
            Packet::Puback(_) => PacketType::Puback,
            Packet::Pubrec(_) => PacketType::Pubrec,
            Packet::Pubrel(_) => PacketType::Pubrel,
            Packet::Pubcomp(_) => PacketType::Pubcomp,
            Packet::Subscribe(_) => PacketType::Subscribe,
            Packet::Suback(_) => PacketType::Suback,
            Packet::Unsubscribe(_) => PacketType::Unsubscribe,
            Packet::Unsuback(_) => PacketType::Unsuback,
            Packet::Pingreq => PacketType::Pingreq,
            Packet::Pingresp => PacketType::Pingresp,
            Packet::Disconnect { .. } => PacketType::Disconnect,
            Packet::Auth { .. } => PacketType::Auth,
        }
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// 0 when omitted (the v5 short form) and in 3.1.1.
    pub reason: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connack {
    pub session_present: bool,
    /// The 3.1.1 return code or the v5 reason code.
    pub reason: u8,
    pub properties: ConnackProperties,
}

/// The CONNACK properties that limit what a client may send (MQTT 5.0 §3.2.2.3); all `None`
/// in 3.1.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnackProperties {
    pub topic_alias_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub receive_maximum: Option<u16>,
}

/// A decoded PUBLISH: a view on the original bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in v5 with a topic alias.
    pub topic: &'a str,
    /// `Some` iff `qos > 0`.
    pub packet_id: Option<u16>,
    pub topic_alias: Option<u16>,
    /// Bytes of the v5 properties, without their length field (0 in 3.1.1): user properties,
    /// correlation data and the like travel with the message to every subscriber.
    pub properties_len: usize,
    pub payload: &'a [u8],
    packet: &'a [u8],
    body: usize,
    /// The topic name with its 2-byte length.
    topic_span: Span,
}

impl fmt::Debug for Publish<'_> {
    // Sizes, never the payload (it may be a process secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("dup", &self.dup)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic", &self.topic)
            .field("packet_id", &self.packet_id)
            .field("topic_alias", &self.topic_alias)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl<'a> Publish<'a> {
    /// The original bytes of the whole packet, to forward unchanged.
    pub fn packet(&self) -> &'a [u8] {
        self.packet
    }

    /// The same PUBLISH with this topic name (for a gateway that must resend the topic behind
    /// an alias): flags, packet id, properties (the alias included) and payload identical.
    /// Errors: `topic` is not a valid topic name, or the result is too large.
    pub fn with_topic(&self, topic: &str) -> Result<Vec<u8>, Error> {
        if !valid_topic_name(topic) {
            return Err(Error::Malformed(
                "new PUBLISH topic is not a valid topic name",
            ));
        }
        build::replace_string(self.packet, self.body, self.topic_span, topic)
    }
}

/// A decoded SUBSCRIBE.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    pub filters: Vec<Subscription<'a>>,
    packet: &'a [u8],
    body: usize,
    /// End of the properties: where the first entry starts.
    entries: usize,
}

impl fmt::Debug for Subscribe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscribe")
            .field("packet_id", &self.packet_id)
            .field("filters", &self.filters)
            .finish()
    }
}

impl<'a> Subscribe<'a> {
    /// The original bytes of the whole packet, to forward unchanged.
    pub fn packet(&self) -> &'a [u8] {
        self.packet
    }
}

/// One entry of a SUBSCRIBE.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Subscription<'a> {
    pub filter: &'a str,
    /// The maximum QoS requested.
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0, 1 or 2 (v5); 0 in 3.1.1.
    pub retain_handling: u8,
    /// The filter with its 2-byte length and the options byte.
    entry: Span,
}

impl fmt::Debug for Subscription<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("filter", &self.filter)
            .field("qos", &self.qos)
            .field("no_local", &self.no_local)
            .field("retain_as_published", &self.retain_as_published)
            .field("retain_handling", &self.retain_handling)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub packet_id: u16,
    pub filters: Vec<&'a str>,
}

/// SUBACK, or UNSUBACK (whose 3.1.1 form has no reason codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Suback<'a> {
    pub packet_id: u16,
    pub reason_codes: &'a [u8],
}

/// Reason codes the specification defines per packet (MQTT 5.0 §2.4 and each packet's
/// section); anything else is a protocol error.
const CONNACK_V311_CODES: &[u8] = &[0, 1, 2, 3, 4, 5];
const CONNACK_CODES: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK_CODES: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL_CODES: &[u8] = &[0x00, 0x92];
const SUBACK_V311_CODES: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const SUBACK_CODES: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK_CODES: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT_CODES: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH_CODES: &[u8] = &[0x00, 0x18, 0x19];

const TOPIC_NAME: Field = field!("topic name");
const TOPIC_FILTER: Field = field!("topic filter");
const OPTIONS: Field = field!("subscription options");
const REASON: Field = field!("reason code");
const CONNACK_HEADER: Field = field!("CONNACK variable header");

/// Decodes one packet after CONNECT, sent in one direction (`from_client`).
///
/// From the client, CONNECT is a protocol error ("second CONNECT"), and so are CONNACK,
/// SUBACK, UNSUBACK and PINGRESP; from the server, CONNECT, SUBSCRIBE, UNSUBSCRIBE and PINGREQ
/// (and, in 3.1.1, DISCONNECT: only a client sends it there). AUTH in 3.1.1 is malformed.
pub fn decode(packet: &[u8], version: Version, from_client: bool) -> Result<Packet<'_>, Error> {
    use PacketType as T;
    let (first, body) = whole_packet(packet)?;
    let kind = PacketType::from_byte(first).ok_or(Error::Malformed("packet type 0 is reserved"))?;
    match (kind, from_client) {
        (T::Connect, true) => return Err(Error::Protocol("second CONNECT")),
        (T::Connect, false) => return Err(Error::Protocol("CONNECT from the server")),
        (T::Connack, true) => return Err(Error::Protocol("CONNACK from the client")),
        (T::Suback, true) => return Err(Error::Protocol("SUBACK from the client")),
        (T::Unsuback, true) => return Err(Error::Protocol("UNSUBACK from the client")),
        (T::Pingresp, true) => return Err(Error::Protocol("PINGRESP from the client")),
        (T::Subscribe, false) => return Err(Error::Protocol("SUBSCRIBE from the server")),
        (T::Unsubscribe, false) => return Err(Error::Protocol("UNSUBSCRIBE from the server")),
        (T::Pingreq, false) => return Err(Error::Protocol("PINGREQ from the server")),
        (T::Disconnect, false) if version == Version::V311 => {
            return Err(Error::Protocol("DISCONNECT from the server in MQTT 3.1.1"));
        }
        (T::Auth, _) if version == Version::V311 => {
            return Err(Error::Malformed("AUTH in MQTT 3.1.1"));
        }
        _ => {}
    }
    if kind != T::Publish && first & 0x0F != kind.required_flags() {
        return Err(Error::Malformed("invalid fixed-header flags"));
    }
    let mut r = Reader::new(packet, body);
    let v5 = version == Version::V5;
    Ok(match kind {
        T::Publish => Packet::Publish(publish(r, first, version, from_client, packet, body)?),
        T::Puback => Packet::Puback(pub_ack(r, v5, PUBACK_CODES)?),
        T::Pubrec => Packet::Pubrec(pub_ack(r, v5, PUBACK_CODES)?),
        T::Pubrel => Packet::Pubrel(pub_ack(r, v5, PUBREL_CODES)?),
        T::Pubcomp => Packet::Pubcomp(pub_ack(r, v5, PUBREL_CODES)?),
        T::Subscribe => Packet::Subscribe(subscribe(r, version, packet, body)?),
        T::Unsubscribe => Packet::Unsubscribe(unsubscribe(r, version)?),
        T::Connack => Packet::Connack(connack_packet(r, v5)?),
        T::Suback => {
            let packet_id = r.packet_id()?;
            let reason_codes = if v5 {
                properties::parse(&mut r, Ctx::Ack, |_, _, _| Ok(()))?;
                codes(r.rest(), SUBACK_CODES)?
            } else {
                codes(r.rest(), SUBACK_V311_CODES)?
            };
            Packet::Suback(Suback {
                packet_id,
                reason_codes,
            })
        }
        T::Unsuback => {
            let packet_id = r.packet_id()?;
            let reason_codes = if v5 {
                properties::parse(&mut r, Ctx::Ack, |_, _, _| Ok(()))?;
                codes(r.rest(), UNSUBACK_CODES)?
            } else {
                no_trailing(&r)?;
                &[]
            };
            Packet::Unsuback(Suback {
                packet_id,
                reason_codes,
            })
        }
        T::Pingreq => {
            no_trailing(&r)?;
            Packet::Pingreq
        }
        T::Pingresp => {
            no_trailing(&r)?;
            Packet::Pingresp
        }
        T::Disconnect => Packet::Disconnect {
            reason: disconnect_packet(r, v5, from_client)?,
        },
        T::Auth => Packet::Auth {
            reason: reason_and_properties(&mut r, Ctx::Auth, AUTH_CODES)?,
        },
        T::Connect => return Err(Error::Protocol("second CONNECT")),
    })
}

fn no_trailing(r: &Reader<'_>) -> Result<(), Error> {
    if r.is_empty() {
        Ok(())
    } else {
        Err(Error::Malformed("trailing bytes in a fixed-size packet"))
    }
}

/// A SUBACK/UNSUBACK payload: at least one code, each defined for the packet.
fn codes<'a>(codes: &'a [u8], allowed: &[u8]) -> Result<&'a [u8], Error> {
    if codes.is_empty() {
        return Err(Error::Protocol("acknowledgement without reason codes"));
    }
    if !codes.iter().all(|c| allowed.contains(c)) {
        return Err(Error::Protocol("reason code not defined for this packet"));
    }
    Ok(codes)
}

fn check_reason(reason: u8, allowed: &[u8]) -> Result<u8, Error> {
    if allowed.contains(&reason) {
        Ok(reason)
    } else {
        Err(Error::Protocol("reason code not defined for this packet"))
    }
}

/// The v5 tail shared by DISCONNECT and AUTH: nothing (reason 0), a reason code, or a reason
/// code and properties.
fn reason_and_properties(r: &mut Reader<'_>, ctx: Ctx, allowed: &[u8]) -> Result<u8, Error> {
    if r.is_empty() {
        return Ok(0);
    }
    let reason = check_reason(r.u8(&REASON)?, allowed)?;
    if !r.is_empty() {
        properties::parse(r, ctx, |_, _, _| Ok(()))?;
        no_trailing(r)?;
    }
    Ok(reason)
}

fn disconnect_packet(mut r: Reader<'_>, v5: bool, from_client: bool) -> Result<u8, Error> {
    if !v5 {
        no_trailing(&r)?;
        return Ok(0);
    }
    if r.is_empty() {
        return Ok(0);
    }
    let reason = check_reason(r.u8(&REASON)?, DISCONNECT_CODES)?;
    if !r.is_empty() {
        properties::parse(&mut r, Ctx::Disconnect, |id, _, _| {
            if id == properties::SESSION_EXPIRY_INTERVAL && !from_client {
                return Err(Error::Protocol(
                    "session expiry interval in a DISCONNECT from the server",
                ));
            }
            Ok(())
        })?;
        no_trailing(&r)?;
    }
    Ok(reason)
}

fn pub_ack(mut r: Reader<'_>, v5: bool, allowed: &[u8]) -> Result<Ack, Error> {
    let packet_id = r.packet_id()?;
    let reason = if v5 {
        reason_and_properties(&mut r, Ctx::Ack, allowed)?
    } else {
        no_trailing(&r)?;
        0
    };
    Ok(Ack { packet_id, reason })
}

fn connack_packet(mut r: Reader<'_>, v5: bool) -> Result<Connack, Error> {
    let flags = r.u8(&CONNACK_HEADER)?;
    if flags & 0xFE != 0 {
        return Err(Error::Malformed("reserved CONNACK flags set"));
    }
    let session_present = flags & 0x01 != 0;
    let reason = r.u8(&CONNACK_HEADER)?;
    let mut properties = ConnackProperties::default();
    if v5 {
        check_reason(reason, CONNACK_CODES)?;
        properties::parse(&mut r, Ctx::Connack, |id, value, _| {
            match (id, value) {
                (properties::TOPIC_ALIAS_MAXIMUM, Value::Two(v)) => {
                    properties.topic_alias_maximum = Some(v);
                }
                (properties::MAXIMUM_PACKET_SIZE, Value::Four(v)) => {
                    properties.maximum_packet_size = Some(v);
                }
                (properties::MAXIMUM_QOS, Value::Byte(v)) => {
                    properties.maximum_qos = QoS::from_u8(v);
                }
                (properties::RETAIN_AVAILABLE, Value::Byte(v)) => {
                    properties.retain_available = Some(v == 1);
                }
                (properties::RECEIVE_MAXIMUM, Value::Two(v)) => {
                    properties.receive_maximum = Some(v);
                }
                _ => {}
            }
            Ok(())
        })?;
    } else {
        check_reason(reason, CONNACK_V311_CODES)?;
    }
    no_trailing(&r)?;
    if session_present && reason != 0 {
        return Err(Error::Protocol(
            "session present set in a CONNACK that refuses the connection",
        ));
    }
    Ok(Connack {
        session_present,
        reason,
        properties,
    })
}

fn publish<'a>(
    mut r: Reader<'a>,
    first: u8,
    version: Version,
    from_client: bool,
    packet: &'a [u8],
    body: usize,
) -> Result<Publish<'a>, Error> {
    let qos = QoS::from_u8((first >> 1) & 0x03).ok_or(Error::Malformed("QoS 3 in PUBLISH"))?;
    let dup = first & 0x08 != 0;
    let retain = first & 0x01 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(Error::Malformed("DUP flag set on a QoS 0 PUBLISH"));
    }
    let topic_start = r.pos;
    let topic = r.utf8(&TOPIC_NAME)?;
    let topic_span = Span {
        start: topic_start,
        end: r.pos,
    };
    if topic.contains(['+', '#']) {
        return Err(Error::Malformed("wildcard in PUBLISH topic"));
    }
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let mut topic_alias = None;
    let properties_start = r.pos;
    if version == Version::V5 {
        properties::parse(&mut r, Ctx::Publish, |id, value, _| {
            match (id, value) {
                (properties::TOPIC_ALIAS, Value::Two(v)) => topic_alias = Some(v),
                (properties::SUBSCRIPTION_IDENTIFIER, _) if from_client => {
                    return Err(Error::Protocol(
                        "subscription identifier in a PUBLISH from the client",
                    ));
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    if topic.is_empty() {
        match version {
            Version::V311 => return Err(Error::Protocol("empty topic name in PUBLISH")),
            Version::V5 if topic_alias.is_none() => {
                return Err(Error::Protocol(
                    "empty topic name in PUBLISH without a topic alias",
                ));
            }
            Version::V5 => {}
        }
    }
    let properties_len = property_content(r.pos.saturating_sub(properties_start));
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        topic_alias,
        properties_len,
        payload,
        packet,
        body,
        topic_span,
    })
}

fn subscribe<'a>(
    mut r: Reader<'a>,
    version: Version,
    packet: &'a [u8],
    body: usize,
) -> Result<Subscribe<'a>, Error> {
    let packet_id = r.packet_id()?;
    if version == Version::V5 {
        properties::parse(&mut r, Ctx::Subscribe, |_, _, _| Ok(()))?;
    }
    let entries = r.pos;
    let mut filters = Vec::new();
    while !r.is_empty() {
        let start = r.pos;
        let filter = r.utf8(&TOPIC_FILTER)?;
        let options = r.u8(&OPTIONS)?;
        let shared = check_filter(filter, version)?;
        let qos =
            QoS::from_u8(options & 0x03).ok_or(Error::Malformed("QoS 3 in SUBSCRIBE options"))?;
        let reserved = match version {
            Version::V311 => 0xFC,
            Version::V5 => 0xC0,
        };
        if options & reserved != 0 {
            return Err(Error::Malformed("reserved subscription option bits set"));
        }
        let no_local = options & 0x04 != 0;
        let retain_as_published = options & 0x08 != 0;
        let retain_handling = (options >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(Error::Malformed("retain handling 3 in SUBSCRIBE options"));
        }
        if shared && no_local {
            return Err(Error::Protocol("no local set on a shared subscription"));
        }
        filters.push(Subscription {
            filter,
            qos,
            no_local,
            retain_as_published,
            retain_handling,
            entry: Span { start, end: r.pos },
        });
    }
    if filters.is_empty() {
        return Err(Error::Protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        packet,
        body,
        entries,
    })
}

fn unsubscribe(mut r: Reader<'_>, version: Version) -> Result<Unsubscribe<'_>, Error> {
    let packet_id = r.packet_id()?;
    if version == Version::V5 {
        properties::parse(&mut r, Ctx::Unsubscribe, |_, _, _| Ok(()))?;
    }
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.utf8(&TOPIC_FILTER)?;
        check_filter(filter, version)?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(Error::Protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe { packet_id, filters })
}
