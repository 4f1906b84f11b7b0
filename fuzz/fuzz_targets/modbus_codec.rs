//! Arbitrary bytes as a Modbus TCP stream: split it into frames the way a session does, decode
//! each frame both as a request and as a response, and check the codec's promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ztgate::protocol::modbus::{
    Access, EXCEPTION_LEN, ExceptionCode, MAX_ADU_LEN, MBAP_LEN, RequestError, Span, Written,
    decode_request, decode_response, exception_response, frame_len, split_frame,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    loop {
        match split_frame(buf) {
            Ok(Some((frame, rest))) => {
                // The header cap: a frame is never larger than 260 bytes, so the session never
                // buffers more than that.
                assert!(frame.len() <= MAX_ADU_LEN, "frame of {} bytes", frame.len());
                assert!(frame.len() > MBAP_LEN, "frame without a function code");
                assert_eq!(frame.len() + rest.len(), buf.len());
                check_request(frame);
                check_response(frame);
                buf = rest;
            }
            Ok(None) => {
                // "Need more" only while the announced frame is not all there.
                match frame_len(buf) {
                    Ok(None) => assert!(buf.len() < MBAP_LEN),
                    Ok(Some(n)) => assert!(buf.len() < n && n <= MAX_ADU_LEN),
                    Err(e) => panic!("split_frame said need more, frame_len said {e}"),
                }
                break;
            }
            Err(_) => {
                // A framing error is final for the session; frame_len agrees with split_frame.
                assert!(frame_len(buf).is_err());
                break;
            }
        }
    }
});

fn check_request(frame: &[u8]) {
    match decode_request(frame) {
        Ok(req) => {
            assert_eq!(req.adu(), frame);
            assert_eq!(req.adu().len(), frame.len());
            assert!(req.adu().len() <= MAX_ADU_LEN);
            match req.access {
                Access::None => {}
                Access::Read(_, span) | Access::Write(_, span) => check_span(span),
                Access::ReadWrite { read, write } => {
                    check_span(read);
                    check_span(write);
                }
            }
            match req.written {
                Written::Registers { values, .. } => {
                    assert_eq!(values.len() % 2, 0);
                    assert_eq!(req.written.registers().count(), values.len() / 2);
                }
                Written::Coils { quantity, bits, .. } => {
                    assert_eq!(bits.len(), usize::from(quantity.div_ceil(8)));
                    assert_eq!(req.written.coils().count(), usize::from(quantity));
                }
                Written::Coil { .. } => assert_eq!(req.written.coils().count(), 1),
                Written::Nothing | Written::Mask { .. } => {}
            }
        }
        Err(RequestError::Violation {
            header,
            function,
            violation,
        }) => {
            let code = violation.exception();
            assert!(
                matches!(
                    code,
                    ExceptionCode::IllegalFunction
                        | ExceptionCode::IllegalDataAddress
                        | ExceptionCode::IllegalDataValue
                ),
                "{violation} answered with {code:?}"
            );
            assert!(matches!(code.code(), 0x01..=0x03));
            // The refusal the gateway sends must itself be a valid response to the request.
            let refusal = exception_response(&header, function, code);
            assert_eq!(refusal.len(), EXCEPTION_LEN);
            let response = decode_response(&refusal).expect("our exception response decodes");
            assert_eq!(response.transaction_id(), header.transaction_id);
            assert_eq!(response.exception(), Some(code.code()));
        }
        Err(RequestError::Frame(_)) => {}
    }
}

fn check_span(span: Span) {
    assert!(span.quantity >= 1);
    assert!(u32::from(span.address) + u32::from(span.quantity) <= 0x1_0000);
    assert!(span.last() >= span.address);
}

fn check_response(frame: &[u8]) {
    if let Ok(response) = decode_response(frame) {
        assert_eq!(response.adu(), frame);
        if response.function & 0x80 != 0 {
            assert_eq!(frame.len(), EXCEPTION_LEN);
            assert!(response.exception().is_some());
        } else {
            assert_eq!(response.exception(), None);
        }
    }
}
