//! MQTT 5.0 properties (§2.2.2): a variable byte integer length, then identifier/value pairs.
//!
//! One parser for every packet type: it checks each identifier is defined and allowed in that
//! packet, that non-repeatable ones appear once, that values have their type and range, and
//! hands each property to the caller with its byte range (for rewrites such as
//! [`super::connack_with_limits`]).

use super::{Error, Field, Reader, Span, field, mqtt_str, valid_topic_name};

pub(super) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(super) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(super) const CONTENT_TYPE: u8 = 0x03;
pub(super) const RESPONSE_TOPIC: u8 = 0x08;
pub(super) const CORRELATION_DATA: u8 = 0x09;
pub(super) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(super) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(super) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(super) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(super) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(super) const AUTHENTICATION_DATA: u8 = 0x16;
pub(super) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(super) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(super) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(super) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(super) const SERVER_REFERENCE: u8 = 0x1C;
pub(super) const REASON_STRING: u8 = 0x1F;
pub(super) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(super) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(super) const TOPIC_ALIAS: u8 = 0x23;
pub(super) const MAXIMUM_QOS: u8 = 0x24;
pub(super) const RETAIN_AVAILABLE: u8 = 0x25;
pub(super) const USER_PROPERTY: u8 = 0x26;
pub(super) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(super) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(super) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(super) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// Which property set applies (MQTT 5.0 §2.2.2.2 table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ctx {
    Connect,
    Will,
    Connack,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

// Evaluated at compile time only, over the constant identifiers above: an identifier ≥ 64
// would fail the build, not a request.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < ids.len() {
        m |= 1u64 << ids[i];
        i += 1;
    }
    m
}

impl Ctx {
    fn allowed(self) -> u64 {
        const CONNECT: u64 = mask(&[
            SESSION_EXPIRY_INTERVAL,
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            REQUEST_PROBLEM_INFORMATION,
            REQUEST_RESPONSE_INFORMATION,
            RECEIVE_MAXIMUM,
            TOPIC_ALIAS_MAXIMUM,
            USER_PROPERTY,
            MAXIMUM_PACKET_SIZE,
        ]);
        const WILL: u64 = mask(&[
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            CONTENT_TYPE,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            WILL_DELAY_INTERVAL,
            USER_PROPERTY,
        ]);
        const CONNACK: u64 = mask(&[
            SESSION_EXPIRY_INTERVAL,
            ASSIGNED_CLIENT_IDENTIFIER,
            SERVER_KEEP_ALIVE,
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            RESPONSE_INFORMATION,
            SERVER_REFERENCE,
            REASON_STRING,
            RECEIVE_MAXIMUM,
            TOPIC_ALIAS_MAXIMUM,
            MAXIMUM_QOS,
            RETAIN_AVAILABLE,
            USER_PROPERTY,
            MAXIMUM_PACKET_SIZE,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            SHARED_SUBSCRIPTION_AVAILABLE,
        ]);
        const PUBLISH: u64 = mask(&[
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            CONTENT_TYPE,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            SUBSCRIPTION_IDENTIFIER,
            TOPIC_ALIAS,
            USER_PROPERTY,
        ]);
        const ACK: u64 = mask(&[REASON_STRING, USER_PROPERTY]);
        const SUBSCRIBE: u64 = mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);
        const UNSUBSCRIBE: u64 = mask(&[USER_PROPERTY]);
        const DISCONNECT: u64 = mask(&[
            SESSION_EXPIRY_INTERVAL,
            SERVER_REFERENCE,
            REASON_STRING,
            USER_PROPERTY,
        ]);
        const AUTH: u64 = mask(&[
            AUTHENTICATION_METHOD,
            AUTHENTICATION_DATA,
            REASON_STRING,
            USER_PROPERTY,
        ]);
        match self {
            Ctx::Connect => CONNECT,
            Ctx::Will => WILL,
            Ctx::Connack => CONNACK,
            Ctx::Publish => PUBLISH,
            Ctx::Ack => ACK,
            Ctx::Subscribe => SUBSCRIBE,
            Ctx::Unsubscribe => UNSUBSCRIBE,
            Ctx::Disconnect => DISCONNECT,
            Ctx::Auth => AUTH,
        }
    }

    fn not_allowed(self) -> &'static str {
        match self {
            Ctx::Connect => "property not allowed in CONNECT",
            Ctx::Will => "property not allowed in will properties",
            Ctx::Connack => "property not allowed in CONNACK",
            Ctx::Publish => "property not allowed in PUBLISH",
            Ctx::Ack => "property not allowed in an acknowledgement",
            Ctx::Subscribe => "property not allowed in SUBSCRIBE",
            Ctx::Unsubscribe => "property not allowed in UNSUBSCRIBE",
            Ctx::Disconnect => "property not allowed in DISCONNECT",
            Ctx::Auth => "property not allowed in AUTH",
        }
    }
}

/// A property value, by data type (§1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Value<'a> {
    Byte(u8),
    Two(u16),
    Four(u32),
    Var(usize),
    Str(&'a str),
    Bin(&'a [u8]),
    Pair(&'a str, &'a str),
}

const VALUE: Field = field!("property value");
const STRING: Field = field!("string property");
const USER: Field = field!("user property");

fn read_value<'a>(r: &mut Reader<'a>, id: u8) -> Result<Value<'a>, Error> {
    Ok(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Value::Byte(r.u8(&VALUE)?),
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => {
            Value::Two(r.u16(&VALUE)?)
        }
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Value::Four(r.u32(&VALUE)?),
        SUBSCRIPTION_IDENTIFIER => Value::Var(r.varint(&VALUE)?),
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Value::Str(r.utf8(&STRING)?),
        CORRELATION_DATA | AUTHENTICATION_DATA => Value::Bin(r.binary(&VALUE)?),
        USER_PROPERTY => {
            let name = r.binary(&USER)?;
            let value = r.binary(&USER)?;
            match (mqtt_str(name), mqtt_str(value)) {
                (Some(n), Some(v)) => Value::Pair(n, v),
                _ => return Err(Error::Malformed(USER.bad)),
            }
        }
        _ => return Err(Error::Malformed("unknown property identifier")),
    })
}

/// Range checks the specification states per property.
fn check_value(id: u8, value: Value<'_>) -> Result<(), Error> {
    let bad = match (id, value) {
        (PAYLOAD_FORMAT_INDICATOR, Value::Byte(v)) if v > 1 => "payload format indicator above 1",
        (REQUEST_PROBLEM_INFORMATION, Value::Byte(v)) if v > 1 => {
            "request problem information above 1"
        }
        (REQUEST_RESPONSE_INFORMATION, Value::Byte(v)) if v > 1 => {
            "request response information above 1"
        }
        (MAXIMUM_QOS, Value::Byte(v)) if v > 1 => "maximum QoS above 1 in CONNACK",
        (RETAIN_AVAILABLE, Value::Byte(v)) if v > 1 => "retain available above 1",
        (WILDCARD_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) if v > 1 => {
            "wildcard subscription available above 1"
        }
        (SUBSCRIPTION_IDENTIFIER_AVAILABLE, Value::Byte(v)) if v > 1 => {
            "subscription identifier available above 1"
        }
        (SHARED_SUBSCRIPTION_AVAILABLE, Value::Byte(v)) if v > 1 => {
            "shared subscription available above 1"
        }
        (RECEIVE_MAXIMUM, Value::Two(0)) => "receive maximum 0",
        (TOPIC_ALIAS, Value::Two(0)) => "topic alias 0",
        (MAXIMUM_PACKET_SIZE, Value::Four(0)) => "maximum packet size 0",
        (SUBSCRIPTION_IDENTIFIER, Value::Var(0)) => "subscription identifier 0",
        (RESPONSE_TOPIC, Value::Str(t)) if !valid_topic_name(t) => "invalid response topic",
        _ => return Ok(()),
    };
    Err(Error::Protocol(bad))
}

fn repeatable(id: u8, ctx: Ctx) -> bool {
    id == USER_PROPERTY || (id == SUBSCRIPTION_IDENTIFIER && ctx == Ctx::Publish)
}

/// Reads a property block at the reader's position (length included), checks every property
/// and calls `each(id, value, range of the property in the packet)`. Returns the range of the
/// properties after their length.
pub(super) fn parse<'a>(
    r: &mut Reader<'a>,
    ctx: Ctx,
    mut each: impl FnMut(u8, Value<'a>, Span) -> Result<(), Error>,
) -> Result<Span, Error> {
    let len = r.varint(&super::PROPERTIES)?;
    let mut props = r.sub(len, &super::PROPERTIES)?;
    let block = Span {
        start: props.pos,
        end: props.end,
    };
    let allowed = ctx.allowed();
    let mut seen = 0u64;
    while !props.is_empty() {
        let start = props.pos;
        let id = props.u8(&super::PROPERTIES)?;
        // Identifiers are variable byte integers, but every defined one is below 0x80.
        let bit = 1u64.checked_shl(u32::from(id)).unwrap_or(0);
        if bit == 0 || (bit & KNOWN_MASK) == 0 {
            return Err(Error::Malformed("unknown property identifier"));
        }
        if bit & allowed == 0 {
            return Err(Error::Malformed(ctx.not_allowed()));
        }
        if seen & bit != 0 && !repeatable(id, ctx) {
            return Err(Error::Protocol("property included more than once"));
        }
        seen |= bit;
        let value = read_value(&mut props, id)?;
        check_value(id, value)?;
        each(
            id,
            value,
            Span {
                start,
                end: props.pos,
            },
        )?;
    }
    Ok(block)
}

const KNOWN_MASK: u64 = mask(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    SUBSCRIPTION_IDENTIFIER,
    SESSION_EXPIRY_INTERVAL,
    ASSIGNED_CLIENT_IDENTIFIER,
    SERVER_KEEP_ALIVE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REQUEST_PROBLEM_INFORMATION,
    WILL_DELAY_INTERVAL,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    TOPIC_ALIAS,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    USER_PROPERTY,
    MAXIMUM_PACKET_SIZE,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
]);
