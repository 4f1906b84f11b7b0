//! Packets the gateway writes itself (refusals, acknowledgements) and the rewrites of packets
//! it forwards. Every builder's output decodes with [`super::decode`].

use super::properties::{self, Ctx};
use super::{
    ConnackProperties, Error, MAX_REMAINING_LENGTH, Packet, PacketType, QoS, Reader, Span,
    Subscribe, Version, decode, whole_packet,
};

/// PINGRESP: type 13, remaining length 0.
pub const PINGRESP: [u8; 2] = [0xD0, 0];

const CONNACK_FIRST: u8 = 0x20;
const SUBACK_FIRST: u8 = 0x90;
const SUBSCRIBE_FIRST: u8 = 0x82;
const DISCONNECT_FIRST: u8 = 0xE0;

/// Appends `value` (at most [`MAX_REMAINING_LENGTH`]) as a variable byte integer.
pub(super) fn push_varint(out: &mut Vec<u8>, value: usize) {
    let mut rest = value;
    loop {
        let digit = u8::try_from(rest & 0x7F).unwrap_or(0);
        rest >>= 7;
        if rest == 0 {
            out.push(digit);
            return;
        }
        out.push(digit | 0x80);
    }
}

/// A packet from its first byte and its body (variable header and payload); `None` when the
/// body is too long for a remaining length.
fn packet_from(first: u8, parts: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let remaining = parts
        .iter()
        .try_fold(0usize, |n, p| n.checked_add(p.len()))
        .filter(|&n| n <= MAX_REMAINING_LENGTH)
        .ok_or(Error::TooLarge {
            size: parts.iter().fold(0usize, |n, p| n.saturating_add(p.len())),
            max: MAX_REMAINING_LENGTH,
        })?;
    let mut out = Vec::with_capacity(remaining.saturating_add(5));
    out.push(first);
    push_varint(&mut out, remaining);
    for part in parts {
        out.extend_from_slice(part);
    }
    Ok(out)
}

/// CONNACK. 3.1.1: `reason` is the return code byte; v5: the reason code, property length 0.
pub fn connack(version: Version, session_present: bool, reason: u8) -> Vec<u8> {
    let flags = u8::from(session_present);
    match version {
        Version::V311 => vec![CONNACK_FIRST, 2, flags, reason],
        Version::V5 => vec![CONNACK_FIRST, 3, flags, reason, 0],
    }
}

/// PUBACK, PUBREC, PUBREL (fixed-header flags 0010) or PUBCOMP. In v5 reason 0 gives the
/// 2-byte short form, any other reason a reason byte and no properties; 3.1.1 has no reason.
/// Any other `kind` is a caller bug: it debug-asserts and builds a PUBACK.
pub fn ack(kind: PacketType, version: Version, packet_id: u16, reason: u8) -> Vec<u8> {
    let first = match kind {
        PacketType::Puback => 0x40,
        PacketType::Pubrec => 0x50,
        PacketType::Pubrel => 0x62,
        PacketType::Pubcomp => 0x70,
        other => {
            debug_assert!(false, "ack() cannot build {}", other.name());
            0x40
        }
    };
    let [hi, lo] = packet_id.to_be_bytes();
    match version {
        Version::V5 if reason != 0 => vec![first, 3, hi, lo, reason],
        _ => vec![first, 2, hi, lo],
    }
}

/// SUBACK with one code per filter (v5: property length 0).
pub fn suback(version: Version, packet_id: u16, codes: &[u8]) -> Vec<u8> {
    let id = packet_id.to_be_bytes();
    let parts: [&[u8]; 3] = match version {
        Version::V311 => [&id, &[], codes],
        Version::V5 => [&id, &[0], codes],
    };
    // A list of reason codes as long as a remaining length cannot come from one SUBSCRIBE.
    packet_from(SUBACK_FIRST, &parts).unwrap_or_default()
}

/// A DISCONNECT from the gateway: v5 only (a 3.1.1 server cannot send one, it closes the
/// connection). Reason 0 gives the 2-byte form.
pub fn disconnect(version: Version, reason: u8) -> Option<Vec<u8>> {
    match version {
        Version::V311 => None,
        Version::V5 if reason == 0 => Some(vec![DISCONNECT_FIRST, 0]),
        Version::V5 => Some(vec![DISCONNECT_FIRST, 1, reason]),
    }
}

/// `packet` with the UTF-8 string field at `span` (length prefix included) replaced by `s`;
/// every other byte identical, the remaining length re-encoded.
pub(super) fn replace_string(
    packet: &[u8],
    body: usize,
    span: Span,
    s: &str,
) -> Result<Vec<u8>, Error> {
    let len = u16::try_from(s.len())
        .map_err(|_| Error::Malformed("string longer than 65535 bytes"))?
        .to_be_bytes();
    let inconsistent = Error::Malformed("field outside its packet");
    let first = *packet.first().ok_or(inconsistent.clone())?;
    let before = packet.get(body..span.start).ok_or(inconsistent.clone())?;
    let after = packet.get(span.end..).ok_or(inconsistent)?;
    packet_from(first, &[before, &len, s.as_bytes(), after])
}

impl Subscribe<'_> {
    /// A SUBSCRIBE with the same packet id and properties (byte-identical) carrying only the
    /// entries where `keep[i]` is `Some(q)`; an entry whose requested QoS is above `q` gets QoS
    /// `q` (its other option bits kept). `None` unless `keep.len() == filters.len()` and at
    /// least one entry is kept.
    pub fn rebuild(&self, keep: &[Option<QoS>]) -> Option<Vec<u8>> {
        if keep.len() != self.filters.len() || keep.iter().all(Option::is_none) {
            return None;
        }
        let header = self.packet.get(self.body..self.entries)?;
        let mut body = Vec::with_capacity(self.packet.len());
        body.extend_from_slice(header);
        for (sub, keep) in self.filters.iter().zip(keep) {
            let Some(max) = keep else { continue };
            let entry = self.packet.get(sub.entry.start..sub.entry.end)?;
            let (options, filter) = entry.split_last()?;
            let qos = sub.qos.min(*max);
            body.extend_from_slice(filter);
            body.push((options & !0x03) | qos.as_u8());
        }
        packet_from(SUBSCRIBE_FIRST, &[&body]).ok()
    }
}

/// The broker's CONNACK with the gateway's limits merged in (v5):
/// - `maximum_packet_size`: the smaller of the broker's (if any) and ours;
/// - `maximum_qos`: the smaller (absent means 2);
/// - `retain_available`: both must allow it (absent means available);
/// - `topic_alias_maximum`: the smaller (absent means 0, so it stays absent);
/// - `receive_maximum`: the smaller (absent means 65535).
///
/// A `None` in `ours` (or a 0 where the specification forbids 0) leaves that property as the
/// broker sent it. A merged property keeps its place; one the broker did not send is appended.
/// Every other property is kept byte-identical and in order. A 3.1.1 CONNACK is returned
/// unchanged. Errors: `packet` is not a CONNACK that decodes.
pub fn connack_with_limits(
    packet: &[u8],
    version: Version,
    ours: &ConnackProperties,
) -> Result<Vec<u8>, Error> {
    let broker = match decode(packet, version, false)? {
        Packet::Connack(connack) => connack.properties,
        _ => return Err(Error::Protocol("not a CONNACK")),
    };
    if version == Version::V311 {
        return Ok(packet.to_vec());
    }
    let (_, body) = whole_packet(packet)?;
    let mut r = Reader::new(packet, body);
    let flags_and_reason = r.take(2, &super::CONNACK_HEADER)?;

    let packet_size = ours.maximum_packet_size.filter(|&m| m > 0);
    let receive = ours.receive_maximum.filter(|&m| m > 0);
    let merged_size = packet_size.map(|m| broker.maximum_packet_size.map_or(m, |b| b.min(m)));
    let merged_qos = ours
        .maximum_qos
        .map(|q| broker.maximum_qos.unwrap_or(QoS::ExactlyOnce).min(q));
    let merged_retain = ours
        .retain_available
        .map(|x| broker.retain_available.unwrap_or(true) && x);
    let merged_alias = ours
        .topic_alias_maximum
        .map(|t| broker.topic_alias_maximum.unwrap_or(0).min(t));
    let merged_receive = receive.map(|m| broker.receive_maximum.unwrap_or(u16::MAX).min(m));

    let mut props = Vec::with_capacity(packet.len().saturating_add(16));
    properties::parse(&mut r, Ctx::Connack, |id, _, span| {
        match (
            id,
            merged_size,
            merged_qos,
            merged_retain,
            merged_alias,
            merged_receive,
        ) {
            (properties::MAXIMUM_PACKET_SIZE, Some(v), ..) => {
                props.push(id);
                props.extend_from_slice(&v.to_be_bytes());
            }
            (properties::MAXIMUM_QOS, _, Some(q), ..) => props.extend_from_slice(&[id, q.as_u8()]),
            (properties::RETAIN_AVAILABLE, _, _, Some(x), ..) => {
                props.extend_from_slice(&[id, u8::from(x)]);
            }
            (properties::TOPIC_ALIAS_MAXIMUM, _, _, _, Some(v), _) => {
                props.push(id);
                props.extend_from_slice(&v.to_be_bytes());
            }
            (properties::RECEIVE_MAXIMUM, _, _, _, _, Some(v)) => {
                props.push(id);
                props.extend_from_slice(&v.to_be_bytes());
            }
            _ => props.extend_from_slice(
                packet
                    .get(span.start..span.end)
                    .ok_or(Error::Malformed("property outside its packet"))?,
            ),
        }
        Ok(())
    })?;
    // Limits the broker did not state, where ours is stricter than the default.
    if let (None, Some(v)) = (broker.maximum_packet_size, merged_size) {
        props.push(properties::MAXIMUM_PACKET_SIZE);
        props.extend_from_slice(&v.to_be_bytes());
    }
    if let (None, Some(q)) = (broker.maximum_qos, merged_qos) {
        if q < QoS::ExactlyOnce {
            props.extend_from_slice(&[properties::MAXIMUM_QOS, q.as_u8()]);
        }
    }
    if let (None, Some(false)) = (broker.retain_available, merged_retain) {
        props.extend_from_slice(&[properties::RETAIN_AVAILABLE, 0]);
    }
    if let (None, Some(v)) = (broker.receive_maximum, merged_receive) {
        if v < u16::MAX {
            props.push(properties::RECEIVE_MAXIMUM);
            props.extend_from_slice(&v.to_be_bytes());
        }
    }
    let mut length = Vec::with_capacity(4);
    push_varint(&mut length, props.len());
    packet_from(CONNACK_FIRST, &[flags_and_reason, &length, &props])
}
