//! The Modbus TCP codec against real captured traffic (tests/fixtures/modbus/*.hex: mbpoll and
//! pymodbus clients and servers through a byte-exact relay) and against generated frames.
//!
//! Fixture format: lines starting with `#` are comments; every other line is one ADU in
//! lowercase hex. `*.client.hex` holds requests, `*.server.hex` responses, in capture order.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use proptest::prelude::*;
use ztgate::protocol::modbus::{
    Access, ExceptionCode, Function, MAX_ADU_LEN, MBAP_LEN, RequestError, Span, Table, Written,
    decode_request, decode_response, exception_response, frame_len, split_frame,
};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Client -> server: requests.
    Client,
    /// Server -> client: responses.
    Server,
}

struct Fixture {
    /// File name without `.client.hex` / `.server.hex`.
    exchange: String,
    file: String,
    side: Side,
    frames: Vec<Vec<u8>>,
}

fn fixture_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/modbus"
    ))
}

/// Decodes lowercase hex; panics (failing the test) on anything else.
fn unhex(line: &str) -> Vec<u8> {
    fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit: {:?}", char::from(c)),
        }
    }
    let bytes = line.as_bytes();
    assert!(bytes.len() % 2 == 0, "odd number of hex digits: {line}");
    bytes
        .chunks_exact(2)
        .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
        .collect()
}

/// `"42 bytes, 5 frames"` from the `# format:` comment, to check no line was dropped.
fn announced_counts(text: &str) -> Option<(usize, usize)> {
    let format = text.lines().find(|l| l.starts_with("# format:"))?;
    let tail = format.rsplit(';').next()?;
    let mut words = tail.split_whitespace();
    let bytes = words.next()?.parse().ok()?;
    let _ = words.next(); // "bytes,"
    let frames = words.next()?.parse().ok()?;
    Some((bytes, frames))
}

fn load_fixtures() -> Vec<Fixture> {
    let mut fixtures = Vec::new();
    let entries = fs::read_dir(fixture_dir()).expect("tests/fixtures/modbus exists");
    for entry in entries {
        let path = entry.expect("readable directory entry").path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("UTF-8 file name")
            .to_owned();
        let (exchange, side) = if let Some(x) = file.strip_suffix(".client.hex") {
            (x, Side::Client)
        } else if let Some(x) = file.strip_suffix(".server.hex") {
            (x, Side::Server)
        } else {
            assert!(
                !file.ends_with(".hex"),
                "{file}: neither .client.hex nor .server.hex"
            );
            continue;
        };
        let text = fs::read_to_string(&path).expect("readable fixture");
        let frames: Vec<Vec<u8>> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(unhex)
            .collect();
        assert!(!frames.is_empty(), "{file}: no frame");
        let (bytes, count) = announced_counts(&text)
            .unwrap_or_else(|| panic!("{file}: no `# format: ... N bytes, M frames` line"));
        assert_eq!(frames.len(), count, "{file}: frame count");
        assert_eq!(
            frames.iter().map(Vec::len).sum::<usize>(),
            bytes,
            "{file}: bytes"
        );
        fixtures.push(Fixture {
            exchange: exchange.to_owned(),
            file,
            side,
            frames,
        });
    }
    fixtures.sort_by(|a, b| a.file.cmp(&b.file));
    fixtures
}

fn all_fixture_frames() -> Vec<(Side, Vec<u8>)> {
    load_fixtures()
        .into_iter()
        .flat_map(|f| f.frames.into_iter().map(move |frame| (f.side, frame)))
        .collect()
}

#[test]
fn fixture_set_covers_both_sides_of_many_exchanges() {
    let fixtures = load_fixtures();
    // A glob that matches nothing would make every test below pass vacuously.
    assert!(
        fixtures.len() >= 60,
        "only {} fixture files",
        fixtures.len()
    );
    let clients = fixtures.iter().filter(|f| f.side == Side::Client).count();
    let servers = fixtures.iter().filter(|f| f.side == Side::Server).count();
    assert!(
        clients >= 30 && servers >= 30,
        "{clients} client, {servers} server files"
    );
    // Every public function the gateway filters on appears in some capture.
    let mut functions: Vec<u8> = fixtures
        .iter()
        .filter(|f| f.side == Side::Client)
        .flat_map(|f| f.frames.iter().map(|frame| frame[MBAP_LEN]))
        .collect();
    functions.sort_unstable();
    functions.dedup();
    for code in [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 22, 23, 24, 43] {
        assert!(
            functions.contains(&code),
            "no captured request for FC{code}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Captured streams, re-chunked every which way
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a fixed-seed PRNG, so a failing chunking is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The chunk sizes to cut a stream of `len` bytes into, by name.
fn chunkings(len: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for size in [1, 2, 3, 7] {
        out.push((
            format!("{size}-byte chunks"),
            vec![size; len.div_ceil(size)],
        ));
    }
    for seed in 1..=8u64 {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed);
        let mut sizes = Vec::new();
        let mut total = 0;
        while total < len {
            // Mostly small chunks, sometimes more than a whole frame.
            let size = if rng.below(4) == 0 {
                1 + rng.below(2 * MAX_ADU_LEN)
            } else {
                1 + rng.below(16)
            };
            sizes.push(size);
            total += size;
        }
        out.push((format!("random chunks (seed {seed})"), sizes));
    }
    out.push(("all at once".to_owned(), vec![len.max(1)]));
    out
}

/// Feeds `stream` in chunks of `sizes` to a buffer the way a session does and returns the
/// frames split off it, checking each with `check`.
fn reframe(stream: &[u8], sizes: &[usize], mut check: impl FnMut(&[u8])) -> Vec<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    for &size in sizes {
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        rest = after;
        buf.extend_from_slice(chunk);
        loop {
            match split_frame(&buf) {
                Ok(Some((frame, _))) => {
                    let len = frame.len();
                    assert!(len <= MAX_ADU_LEN);
                    check(frame);
                    frames.push(frame.to_vec());
                    buf.drain(..len);
                }
                Ok(None) => break,
                Err(e) => panic!("framing error on captured traffic: {e}"),
            }
        }
        // Never more than one incomplete frame plus the chunk just read.
        assert!(buf.len() < MAX_ADU_LEN + chunk.len());
    }
    assert!(rest.is_empty(), "chunk sizes do not cover the stream");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frames
}

#[test]
fn decodes_every_captured_request_in_any_chunking() {
    let fixtures = load_fixtures();
    let mut checked = 0;
    for fixture in fixtures.iter().filter(|f| f.side == Side::Client) {
        let stream = fixture.frames.concat();
        for (how, sizes) in chunkings(stream.len()) {
            let frames = reframe(&stream, &sizes, |frame| match decode_request(frame) {
                Ok(req) => {
                    assert_eq!(req.adu(), frame, "{}", fixture.file);
                    assert_eq!(req.function.0, frame[MBAP_LEN]);
                    assert_eq!(
                        req.transaction_id(),
                        u16::from_be_bytes([frame[0], frame[1]])
                    );
                    assert_eq!(req.unit(), frame[6]);
                    checked += 1;
                }
                Err(e) => panic!("{} ({how}): captured request refused: {e}", fixture.file),
            });
            assert_eq!(frames, fixture.frames, "{} ({how})", fixture.file);
        }
    }
    assert!(checked > 0);
}

#[test]
fn decodes_every_captured_response_in_any_chunking() {
    let fixtures = load_fixtures();
    let mut checked = 0;
    for fixture in fixtures.iter().filter(|f| f.side == Side::Server) {
        let stream = fixture.frames.concat();
        for (how, sizes) in chunkings(stream.len()) {
            let frames = reframe(&stream, &sizes, |frame| match decode_response(frame) {
                Ok(response) => {
                    assert_eq!(response.adu(), frame, "{}", fixture.file);
                    assert_eq!(response.function, frame[MBAP_LEN]);
                    checked += 1;
                }
                Err(e) => panic!("{} ({how}): captured response refused: {e}", fixture.file),
            });
            assert_eq!(frames, fixture.frames, "{} ({how})", fixture.file);
        }
    }
    assert!(checked > 0);
}

#[test]
fn every_captured_response_answers_its_request() {
    let fixtures = load_fixtures();
    let mut requests: HashMap<(&str, u16), Vec<u8>> = HashMap::new();
    for fixture in fixtures.iter().filter(|f| f.side == Side::Client) {
        for frame in &fixture.frames {
            let req = decode_request(frame).expect("captured request");
            requests.insert((&fixture.exchange, req.transaction_id()), frame.clone());
        }
    }
    let mut paired = 0;
    for fixture in fixtures.iter().filter(|f| f.side == Side::Server) {
        for frame in &fixture.frames {
            let response = decode_response(frame).expect("captured response");
            let request = requests
                .get(&(fixture.exchange.as_str(), response.transaction_id()))
                .unwrap_or_else(|| panic!("{}: response without a request", fixture.file));
            let req = decode_request(request).expect("captured request");
            assert_eq!(response.answers(req.function), Ok(()), "{}", fixture.file);
            // And never another function's request.
            let other = Function(req.function.0 % 127 + 1);
            assert!(response.answers(other).is_err(), "{}", fixture.file);
            if let Some(code) = response.exception() {
                assert!(
                    [0x01, 0x02, 0x03, 0x04, 0x0A, 0x0B].contains(&code),
                    "{}: exception {code:#04x}",
                    fixture.file
                );
            }
            paired += 1;
        }
    }
    assert!(paired >= 30, "only {paired} responses paired");
}

#[test]
fn one_long_stream_of_every_capture_reframes_exactly() {
    let frames: Vec<Vec<u8>> = all_fixture_frames()
        .into_iter()
        .filter(|(side, _)| *side == Side::Client)
        .map(|(_, f)| f)
        .collect();
    let stream = frames.concat();
    for (how, sizes) in chunkings(stream.len()) {
        let got = reframe(&stream, &sizes, |frame| {
            decode_request(frame).expect("captured request");
        });
        assert_eq!(got, frames, "{how}");
    }
}

#[test]
fn every_strict_prefix_of_a_captured_frame_needs_more_bytes() {
    for (_, frame) in all_fixture_frames() {
        for n in 0..frame.len() {
            assert_eq!(split_frame(&frame[..n]), Ok(None), "{n} of {frame:02x?}");
        }
        assert_eq!(split_frame(&frame), Ok(Some((&frame[..], &[][..]))));
    }
}

/// The promises that hold whatever the bytes: checked on mutated and arbitrary input.
fn check_invariants(bytes: &[u8]) {
    match frame_len(bytes) {
        Ok(None) => assert!(bytes.len() < MBAP_LEN),
        Ok(Some(n)) => assert!((MBAP_LEN + 1..=MAX_ADU_LEN).contains(&n)),
        Err(_) => assert!(split_frame(bytes).is_err()),
    }
    let mut buf = bytes;
    while let Ok(Some((frame, rest))) = split_frame(buf) {
        assert!(frame.len() <= MAX_ADU_LEN);
        match decode_request(frame) {
            Ok(req) => {
                assert_eq!(req.adu(), frame);
                let spans = match req.access {
                    Access::None => vec![],
                    Access::Read(_, s) | Access::Write(_, s) => vec![s],
                    Access::ReadWrite { read, write } => vec![read, write],
                };
                for span in spans {
                    assert!(span.quantity >= 1);
                    assert!(u32::from(span.address) + u32::from(span.quantity) <= 0x1_0000);
                }
                let _ = req.written.registers().count();
                let _ = req.written.coils().count();
                let _ = format!("{req:?}");
            }
            Err(RequestError::Violation {
                header,
                function,
                violation,
            }) => {
                let code = violation.exception();
                assert!(matches!(
                    code,
                    ExceptionCode::IllegalFunction
                        | ExceptionCode::IllegalDataAddress
                        | ExceptionCode::IllegalDataValue
                ));
                let refusal = exception_response(&header, function, code);
                assert!(decode_response(&refusal).is_ok());
            }
            Err(RequestError::Frame(e)) => {
                let _ = e.to_string();
            }
        }
        if let Ok(response) = decode_response(frame) {
            assert_eq!(response.adu(), frame);
            let _ = response.exception();
        }
        buf = rest;
    }
}

#[test]
fn flipping_any_byte_of_a_captured_frame_never_panics() {
    let mut mutations = 0u32;
    for (_, frame) in all_fixture_frames() {
        let original_len = frame_len(&frame).expect("valid").expect("complete");
        for i in 0..frame.len() {
            for mask in 1..=255u8 {
                let mut mutated = frame.clone();
                mutated[i] ^= mask;
                check_invariants(&mutated);
                // Only the protocol id and length bytes decide where the frame ends.
                if !(2..6).contains(&i) {
                    assert_eq!(frame_len(&mutated), Ok(Some(original_len)));
                }
                mutations += 1;
            }
        }
    }
    assert!(mutations > 100_000, "{mutations}");
}

// ---------------------------------------------------------------------------------------------
// Generated input
// ---------------------------------------------------------------------------------------------

/// A valid request, as a test-side model to encode independently of the codec.
#[derive(Clone, Debug)]
enum Model {
    ReadBits {
        function: u8,
        address: u16,
        quantity: u16,
    },
    ReadRegisters {
        function: u8,
        address: u16,
        quantity: u16,
    },
    WriteCoil {
        address: u16,
        on: bool,
    },
    WriteRegister {
        address: u16,
        value: u16,
    },
    WriteCoils {
        address: u16,
        coils: Vec<bool>,
    },
    WriteRegisters {
        address: u16,
        values: Vec<u16>,
    },
    MaskWrite {
        address: u16,
        and_mask: u16,
        or_mask: u16,
    },
    ReadWrite {
        read: Span,
        write_address: u16,
        values: Vec<u16>,
    },
}

/// An address at which `quantity` items still fit below 65536.
fn address_for(quantity: usize) -> impl Strategy<Value = u16> {
    0..=u16::try_from(0x1_0000 - quantity).expect("quantity ≥ 1")
}

fn span(max: u16) -> impl Strategy<Value = Span> {
    (1..=max).prop_flat_map(|quantity| {
        address_for(usize::from(quantity)).prop_map(move |address| Span { address, quantity })
    })
}

fn model() -> impl Strategy<Value = Model> {
    prop_oneof![
        (prop::sample::select(vec![1u8, 2]), span(2000)).prop_map(|(function, s)| {
            Model::ReadBits {
                function,
                address: s.address,
                quantity: s.quantity,
            }
        }),
        (prop::sample::select(vec![3u8, 4]), span(125)).prop_map(|(function, s)| {
            Model::ReadRegisters {
                function,
                address: s.address,
                quantity: s.quantity,
            }
        }),
        (any::<u16>(), any::<bool>()).prop_map(|(address, on)| Model::WriteCoil { address, on }),
        (any::<u16>(), any::<u16>())
            .prop_map(|(address, value)| Model::WriteRegister { address, value }),
        prop::collection::vec(any::<bool>(), 1..=1968).prop_flat_map(|coils| {
            address_for(coils.len()).prop_map(move |address| Model::WriteCoils {
                address,
                coils: coils.clone(),
            })
        }),
        prop::collection::vec(any::<u16>(), 1..=123).prop_flat_map(|values| {
            address_for(values.len()).prop_map(move |address| Model::WriteRegisters {
                address,
                values: values.clone(),
            })
        }),
        (any::<u16>(), any::<u16>(), any::<u16>()).prop_map(|(address, and_mask, or_mask)| {
            Model::MaskWrite {
                address,
                and_mask,
                or_mask,
            }
        }),
        (span(125), prop::collection::vec(any::<u16>(), 1..=121)).prop_flat_map(
            |(read, values)| {
                address_for(values.len()).prop_map(move |write_address| Model::ReadWrite {
                    read,
                    write_address,
                    values: values.clone(),
                })
            }
        ),
    ]
}

fn be(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn count(n: usize) -> u16 {
    u16::try_from(n).expect("count fits a u16")
}

/// Encodes a request ADU from the specification, independently of the decoder.
fn encode(transaction_id: u16, unit: u8, model: &Model) -> Vec<u8> {
    let mut pdu = Vec::new();
    match model {
        Model::ReadBits {
            function,
            address,
            quantity,
        }
        | Model::ReadRegisters {
            function,
            address,
            quantity,
        } => {
            pdu.push(*function);
            be(&mut pdu, *address);
            be(&mut pdu, *quantity);
        }
        Model::WriteCoil { address, on } => {
            pdu.push(5);
            be(&mut pdu, *address);
            be(&mut pdu, if *on { 0xFF00 } else { 0x0000 });
        }
        Model::WriteRegister { address, value } => {
            pdu.push(6);
            be(&mut pdu, *address);
            be(&mut pdu, *value);
        }
        Model::WriteCoils { address, coils } => {
            pdu.push(15);
            be(&mut pdu, *address);
            be(&mut pdu, count(coils.len()));
            let bytes: Vec<u8> = coils
                .chunks(8)
                .map(|byte| {
                    byte.iter()
                        .enumerate()
                        .fold(0u8, |acc, (bit, on)| acc | (u8::from(*on) << bit))
                })
                .collect();
            pdu.push(u8::try_from(bytes.len()).expect("≤ 246 bytes"));
            pdu.extend_from_slice(&bytes);
        }
        Model::WriteRegisters { address, values } => {
            pdu.push(16);
            be(&mut pdu, *address);
            be(&mut pdu, count(values.len()));
            pdu.push(u8::try_from(values.len() * 2).expect("≤ 246 bytes"));
            values.iter().for_each(|v| be(&mut pdu, *v));
        }
        Model::MaskWrite {
            address,
            and_mask,
            or_mask,
        } => {
            pdu.push(22);
            be(&mut pdu, *address);
            be(&mut pdu, *and_mask);
            be(&mut pdu, *or_mask);
        }
        Model::ReadWrite {
            read,
            write_address,
            values,
        } => {
            pdu.push(23);
            be(&mut pdu, read.address);
            be(&mut pdu, read.quantity);
            be(&mut pdu, *write_address);
            be(&mut pdu, count(values.len()));
            pdu.push(u8::try_from(values.len() * 2).expect("≤ 242 bytes"));
            values.iter().for_each(|v| be(&mut pdu, *v));
        }
    }
    let mut adu = Vec::new();
    be(&mut adu, transaction_id);
    be(&mut adu, 0); // protocol id
    be(&mut adu, count(pdu.len() + 1)); // unit + PDU
    adu.push(unit);
    adu.extend_from_slice(&pdu);
    adu
}

/// What the decoder must report for `model`: function, access, register and coil writes.
#[allow(clippy::type_complexity)]
fn expected(model: &Model) -> (u8, Access, Vec<(u16, u16)>, Vec<(u16, bool)>) {
    let s = |address, quantity| Span { address, quantity };
    let regs = |address: u16, values: &[u16]| {
        values
            .iter()
            .zip(address..)
            .map(|(v, a)| (a, *v))
            .collect::<Vec<_>>()
    };
    match model {
        Model::ReadBits {
            function,
            address,
            quantity,
        } => {
            let table = if *function == 1 {
                Table::Coils
            } else {
                Table::DiscreteInputs
            };
            (
                *function,
                Access::Read(table, s(*address, *quantity)),
                vec![],
                vec![],
            )
        }
        Model::ReadRegisters {
            function,
            address,
            quantity,
        } => {
            let table = if *function == 3 {
                Table::HoldingRegisters
            } else {
                Table::InputRegisters
            };
            (
                *function,
                Access::Read(table, s(*address, *quantity)),
                vec![],
                vec![],
            )
        }
        Model::WriteCoil { address, on } => (
            5,
            Access::Write(Table::Coils, s(*address, 1)),
            vec![],
            vec![(*address, *on)],
        ),
        Model::WriteRegister { address, value } => (
            6,
            Access::Write(Table::HoldingRegisters, s(*address, 1)),
            vec![(*address, *value)],
            vec![],
        ),
        Model::WriteCoils { address, coils } => (
            15,
            Access::Write(Table::Coils, s(*address, count(coils.len()))),
            vec![],
            coils
                .iter()
                .zip(*address..)
                .map(|(on, a)| (a, *on))
                .collect(),
        ),
        Model::WriteRegisters { address, values } => (
            16,
            Access::Write(Table::HoldingRegisters, s(*address, count(values.len()))),
            regs(*address, values),
            vec![],
        ),
        Model::MaskWrite { address, .. } => (
            22,
            Access::Write(Table::HoldingRegisters, s(*address, 1)),
            vec![],
            vec![],
        ),
        Model::ReadWrite {
            read,
            write_address,
            values,
        } => (
            23,
            Access::ReadWrite {
                read: *read,
                write: s(*write_address, count(values.len())),
            },
            regs(*write_address, values),
            vec![],
        ),
    }
}

/// Bytes that get past the header check more often than uniform noise does: protocol id 0, a
/// length that matches, a function code the decoder knows, then anything.
fn plausible_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        any::<u8>(),
        prop::sample::select(vec![
            1u8, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90, 0x83,
        ]),
        prop::collection::vec(any::<u8>(), 0..=252),
    )
        .prop_map(|(tid, unit, function, body)| {
            let mut adu = Vec::new();
            be(&mut adu, tid);
            be(&mut adu, 0);
            be(&mut adu, count(body.len() + 2));
            adu.push(unit);
            adu.push(function);
            adu.extend_from_slice(&body);
            adu
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..=300)) {
        check_invariants(&bytes);
        let _ = frame_len(&bytes);
        let _ = split_frame(&bytes);
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
    }

    #[test]
    fn never_panics_on_plausible_frames(frame in plausible_frame(), tail in prop::collection::vec(any::<u8>(), 0..=40)) {
        let mut bytes = frame.clone();
        bytes.extend_from_slice(&tail);
        check_invariants(&bytes);
        // The frame is well framed by construction: split_frame finds exactly it.
        prop_assert_eq!(split_frame(&bytes), Ok(Some((&frame[..], &tail[..]))));
        let _ = decode_request(&frame);
        let _ = decode_response(&frame);
    }

    #[test]
    fn every_strict_prefix_of_a_valid_frame_needs_more_bytes(
        tid in any::<u16>(), unit in any::<u8>(), model in model()
    ) {
        let adu = encode(tid, unit, &model);
        for n in 0..adu.len() {
            prop_assert_eq!(split_frame(&adu[..n]), Ok(None), "prefix of {} bytes", n);
        }
        prop_assert_eq!(split_frame(&adu), Ok(Some((&adu[..], &[][..]))));
    }

    #[test]
    fn decodes_what_the_specification_encodes(
        tid in any::<u16>(), unit in any::<u8>(), model in model()
    ) {
        let adu = encode(tid, unit, &model);
        prop_assert!(adu.len() <= MAX_ADU_LEN);
        prop_assert_eq!(frame_len(&adu), Ok(Some(adu.len())));
        let req = decode_request(&adu).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let (function, access, registers, coils) = expected(&model);
        prop_assert_eq!(req.adu(), &adu[..]);
        prop_assert_eq!(req.transaction_id(), tid);
        prop_assert_eq!(req.unit(), unit);
        prop_assert_eq!(req.header.length, count(adu.len() - 6));
        prop_assert_eq!(req.function, Function(function));
        prop_assert_eq!(req.access, access);
        prop_assert_eq!(req.written.registers().collect::<Vec<_>>(), registers);
        prop_assert_eq!(req.written.coils().collect::<Vec<_>>(), coils);
        if let Model::MaskWrite { address, and_mask, or_mask } = model {
            prop_assert_eq!(req.written, Written::Mask { address, and_mask, or_mask });
        }
        prop_assert_eq!(req.is_broadcast(), unit == 0 && function >= 5);
    }
}
