//! Unit tests of the Modbus TCP codec: one byte array per case, a comment on each byte.

// The parent module denies these for hostile input; in a test a panic is a failure report.
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::*;

/// Builds an ADU around `pdu` with a correct MBAP length, for the table-driven limit tests
/// (transaction id 0x0102, unit 1). The per-function tests spell every byte out instead.
fn adu(pdu: &[u8]) -> Vec<u8> {
    let length = u16::try_from(pdu.len() + 1).expect("test PDU fits a u16");
    let mut adu = vec![0x01, 0x02, 0x00, 0x00];
    adu.extend_from_slice(&length.to_be_bytes());
    adu.push(0x01);
    adu.extend_from_slice(pdu);
    adu
}

/// The violation a well-framed request raises; fails the test on any other outcome.
fn violation(adu: &[u8]) -> Violation {
    match decode_request(adu) {
        Err(RequestError::Violation { violation, .. }) => violation,
        other => panic!("expected a violation, got {other:?}"),
    }
}

/// The framing error a request raises; fails the test on any other outcome.
fn frame_error(adu: &[u8]) -> FrameError {
    match decode_request(adu) {
        Err(RequestError::Frame(e)) => e,
        other => panic!("expected a framing error, got {other:?}"),
    }
}

fn read(table: Table, address: u16, quantity: u16) -> Access {
    Access::Read(table, Span { address, quantity })
}

fn write(table: Table, address: u16, quantity: u16) -> Access {
    Access::Write(table, Span { address, quantity })
}

// ---------------------------------------------------------------------------------------------
// Function codes
// ---------------------------------------------------------------------------------------------

#[test]
fn classifies_every_public_function_and_vendor_codes() {
    use FunctionClass::*;
    let table: &[(u8, Option<&str>, FunctionClass)] = &[
        (1, Some("read_coils"), Read),
        (2, Some("read_discrete_inputs"), Read),
        (3, Some("read_holding_registers"), Read),
        (4, Some("read_input_registers"), Read),
        (5, Some("write_single_coil"), Write),
        (6, Some("write_single_register"), Write),
        (7, Some("read_exception_status"), Diagnostic),
        (8, Some("diagnostics"), Diagnostic),
        (11, Some("get_comm_event_counter"), Diagnostic),
        (12, Some("get_comm_event_log"), Diagnostic),
        (15, Some("write_multiple_coils"), Write),
        (16, Some("write_multiple_registers"), Write),
        (17, Some("report_server_id"), Diagnostic),
        (20, Some("read_file_record"), Read),
        (21, Some("write_file_record"), Write),
        (22, Some("mask_write_register"), Write),
        (23, Some("read_write_multiple_registers"), Write),
        (24, Some("read_fifo_queue"), Read),
        (43, Some("read_device_identification"), Diagnostic),
        // Vendor and reserved codes: no name, class Other.
        (90, None, Other),   // Schneider UMAS
        (0, None, Other),    // not a function
        (9, None, Other),    // reserved
        (65, None, Other),   // user-defined range 65..=72
        (100, None, Other),  // user-defined range 100..=110
        (0x83, None, Other), // exception-space code
    ];
    for &(code, name, class) in table {
        let function = Function(code);
        assert_eq!(function.name(), name, "name of {code}");
        assert_eq!(function.class(), class, "class of {code}");
        if let Some(name) = name {
            assert_eq!(Function::from_name(name), Some(function));
            assert_eq!(function.to_string(), format!("{name} ({code})"));
        } else {
            assert_eq!(function.to_string(), format!("function {code}"));
        }
    }
    assert_eq!(Function::names().count(), 19);
    assert_eq!(Function::from_name("umas"), None);
}

#[test]
fn presets_never_contain_vendor_codes() {
    assert_eq!(preset("read_only"), Some(&[1, 2, 3, 4, 24][..]));
    // File records address files, not registers: only `programming` has them.
    assert!(!preset("read_write").expect("read_write").contains(&21));
    assert!(preset("programming").expect("programming").contains(&21));
    assert_eq!(preset("unknown"), None);
    for (name, codes) in PRESETS {
        for &code in *codes {
            assert_ne!(
                Function(code).class(),
                FunctionClass::Other,
                "preset {name} has {code}"
            );
        }
    }
    for &code in preset("read_only").expect("read_only exists") {
        assert_eq!(Function(code).class(), FunctionClass::Read);
    }
}

// ---------------------------------------------------------------------------------------------
// One valid request per function
// ---------------------------------------------------------------------------------------------

#[test]
fn decodes_read_holding_registers() {
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6: unit + 5-byte PDU
        0x01, // unit 1
        0x03, // read holding registers
        0x00, 0x64, // address 100
        0x00, 0x02, // quantity 2
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::READ_HOLDING_REGISTERS);
    assert_eq!(
        req.access,
        Access::Read(
            Table::HoldingRegisters,
            Span {
                address: 100,
                quantity: 2
            }
        )
    );
    assert_eq!(req.adu(), &adu);
}

#[test]
fn decodes_read_coils() {
    let adu = [
        0x12, 0x34, // transaction id 0x1234
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x11, // unit 17
        0x01, // read coils
        0x00, 0x13, // address 19
        0x00, 0x25, // quantity 37
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.header.transaction_id, 0x1234);
    assert_eq!(req.transaction_id(), 0x1234);
    assert_eq!(req.unit(), 17);
    assert_eq!(req.function, Function::READ_COILS);
    assert_eq!(req.access, read(Table::Coils, 19, 37));
    assert_eq!(req.written, Written::Nothing);
    assert_eq!(req.sub_function, None);
    assert!(!req.is_broadcast());
}

#[test]
fn decodes_read_discrete_inputs() {
    let adu = [
        0x00, 0x02, // transaction id 2
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x02, // read discrete inputs
        0x00, 0xC4, // address 196
        0x00, 0x16, // quantity 22
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::READ_DISCRETE_INPUTS);
    assert_eq!(req.access, read(Table::DiscreteInputs, 196, 22));
}

#[test]
fn decodes_read_input_registers() {
    let adu = [
        0x00, 0x03, // transaction id 3
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x04, // read input registers
        0x00, 0x08, // address 8
        0x00, 0x01, // quantity 1
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::READ_INPUT_REGISTERS);
    assert_eq!(req.access, read(Table::InputRegisters, 8, 1));
}

#[test]
fn decodes_write_single_coil_on_and_off() {
    let on = [
        0x00, 0x04, // transaction id 4
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x05, // write single coil
        0x00, 0xAC, // address 172
        0xFF, 0x00, // ON
    ];
    let req = decode_request(&on).expect("valid");
    assert_eq!(req.function, Function::WRITE_SINGLE_COIL);
    assert_eq!(req.access, write(Table::Coils, 172, 1));
    assert_eq!(
        req.written,
        Written::Coil {
            address: 172,
            on: true
        }
    );
    assert_eq!(req.written.coils().collect::<Vec<_>>(), [(172, true)]);
    assert_eq!(req.written.registers().count(), 0);

    let off = [
        0x00, 0x05, // transaction id 5
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x05, // write single coil
        0x00, 0xAC, // address 172
        0x00, 0x00, // OFF
    ];
    let req = decode_request(&off).expect("valid");
    assert_eq!(req.written.coils().collect::<Vec<_>>(), [(172, false)]);
}

#[test]
fn decodes_write_single_register() {
    let adu = [
        0x00, 0x06, // transaction id 6
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x06, // write single register
        0x00, 0x01, // address 1
        0xBE, 0xEF, // value 0xBEEF
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::WRITE_SINGLE_REGISTER);
    assert_eq!(req.access, write(Table::HoldingRegisters, 1, 1));
    assert_eq!(req.written.registers().collect::<Vec<_>>(), [(1, 0xBEEF)]);
}

#[test]
fn decodes_functions_without_data() {
    for code in [0x07, 0x0B, 0x0C, 0x11] {
        let adu = [
            0x00, 0x07, // transaction id 7
            0x00, 0x00, // protocol id 0
            0x00, 0x02, // length 2: unit + function, no data
            0x01, // unit 1
            code, // read exception status / comm event counter / event log / server id
        ];
        let req = decode_request(&adu).expect("valid");
        assert_eq!(req.function, Function(code));
        assert_eq!(req.function.class(), FunctionClass::Diagnostic);
        assert_eq!(req.access, Access::None);
        assert_eq!(req.written, Written::Nothing);
    }
}

#[test]
fn decodes_diagnostics_with_sub_function() {
    let adu = [
        0x00, 0x08, // transaction id 8
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x08, // diagnostics
        0x00, 0x01, // sub-function 1: restart communications option
        0xFF, 0x00, // clear the event log
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function(8));
    assert_eq!(req.sub_function, Some(1));
    assert_eq!(req.access, Access::None);

    let odd = [
        0x00, 0x08, // transaction id 8
        0x00, 0x00, // protocol id 0
        0x00, 0x07, // length 7
        0x01, // unit 1
        0x08, // diagnostics
        0x00, 0x00, // sub-function 0: return query data
        0xA5, 0x37, 0x42, // three bytes: data is made of 16-bit words
    ];
    assert_eq!(
        violation(&odd),
        Violation::Malformed("diagnostics data length")
    );

    let short = [
        0x00, 0x08, // transaction id 8
        0x00, 0x00, // protocol id 0
        0x00, 0x04, // length 4
        0x01, // unit 1
        0x08, // diagnostics
        0x00, 0x00, // sub-function, no data
    ];
    assert_eq!(
        frame_error(&short),
        FrameError::Truncated {
            function: 8,
            need: 5,
            have: 3
        }
    );
}

#[test]
fn decodes_write_multiple_coils() {
    let adu = [
        0x00, 0x0F, // transaction id 15
        0x00, 0x00, // protocol id 0
        0x00, 0x09, // length 9
        0x01, // unit 1
        0x0F, // write multiple coils
        0x00, 0x13, // address 19
        0x00, 0x0A, // quantity 10
        0x02, // byte count 2
        0xCD, // coils 19..=26: 1,0,1,1,0,0,1,1 (least significant bit first)
        0x01, // coils 27..=28: 1,0; the 6 padding bits are 0
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::WRITE_MULTIPLE_COILS);
    assert_eq!(req.access, write(Table::Coils, 19, 10));
    assert_eq!(
        req.written.coils().collect::<Vec<_>>(),
        [
            (19, true),
            (20, false),
            (21, true),
            (22, true),
            (23, false),
            (24, false),
            (25, true),
            (26, true),
            (27, true),
            (28, false),
        ]
    );
    assert_eq!(req.written.registers().count(), 0);
}

#[test]
fn decodes_write_multiple_registers() {
    let adu = [
        0x00, 0x10, // transaction id 16
        0x00, 0x00, // protocol id 0
        0x00, 0x0B, // length 11
        0x01, // unit 1
        0x10, // write multiple registers
        0x00, 0x01, // address 1
        0x00, 0x02, // quantity 2
        0x04, // byte count 4
        0x00, 0x0A, // register 1 = 10
        0x01, 0x02, // register 2 = 258
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::WRITE_MULTIPLE_REGISTERS);
    assert_eq!(req.access, write(Table::HoldingRegisters, 1, 2));
    assert_eq!(
        req.written.registers().collect::<Vec<_>>(),
        [(1, 10), (2, 258)]
    );
    assert_eq!(req.written.coils().count(), 0);
}

#[test]
fn decodes_read_file_record() {
    let adu = [
        0x00, 0x14, // transaction id 20
        0x00, 0x00, // protocol id 0
        0x00, 0x11, // length 17
        0x01, // unit 1
        0x14, // read file record
        0x0E, // byte count 14: two sub-requests
        0x06, // reference type 6
        0x00, 0x04, // file 4
        0x00, 0x01, // record 1
        0x00, 0x02, // record length 2
        0x06, // reference type 6
        0x00, 0x03, // file 3
        0x00, 0x09, // record 9
        0x00, 0x02, // record length 2
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function(20));
    assert_eq!(req.access, Access::None);

    let mut bad_reference = adu;
    bad_reference[9] = 0x05; // reference type 5
    assert_eq!(
        violation(&bad_reference),
        Violation::Malformed("file sub-request")
    );
    let mut bad_record = adu;
    bad_record[12..14].copy_from_slice(&[0x27, 0x10]); // record 10000 > 0x270F
    assert_eq!(
        violation(&bad_record),
        Violation::Malformed("file sub-request")
    );
    let mut bad_count = adu;
    bad_count[8] = 0x0D; // byte count 13, 14 bytes present
    assert_eq!(
        violation(&bad_count),
        Violation::BytesPresent {
            byte_count: 13,
            present: 14
        }
    );
}

#[test]
fn decodes_write_file_record() {
    let adu = [
        0x00, 0x15, // transaction id 21
        0x00, 0x00, // protocol id 0
        0x00, 0x10, // length 16
        0x01, // unit 1
        0x15, // write file record
        0x0D, // byte count 13
        0x06, // reference type 6
        0x00, 0x04, // file 4
        0x00, 0x07, // record 7
        0x00, 0x03, // record length 3 words
        0x06, 0xAF, // word 1
        0x04, 0xBE, // word 2
        0x10, 0x0D, // word 3
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function(21));
    assert_eq!(req.function.class(), FunctionClass::Write);

    // The record length announces 4 words but only 3 follow.
    let mut short_data = adu;
    short_data[15] = 0x04;
    assert_eq!(
        violation(&short_data),
        Violation::Malformed("write file record data")
    );
}

#[test]
fn decodes_mask_write_register() {
    let adu = [
        0x00, 0x16, // transaction id 22
        0x00, 0x00, // protocol id 0
        0x00, 0x08, // length 8
        0x01, // unit 1
        0x16, // mask write register
        0x00, 0x04, // address 4
        0x00, 0xF2, // AND mask
        0x00, 0x25, // OR mask
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::MASK_WRITE_REGISTER);
    assert_eq!(req.access, write(Table::HoldingRegisters, 4, 1));
    assert_eq!(
        req.written,
        Written::Mask {
            address: 4,
            and_mask: 0x00F2,
            or_mask: 0x0025
        }
    );
}

#[test]
fn decodes_read_write_multiple_registers() {
    let adu = [
        0x00, 0x17, // transaction id 23
        0x00, 0x00, // protocol id 0
        0x00, 0x11, // length 17
        0x01, // unit 1
        0x17, // read/write multiple registers
        0x00, 0x03, // read address 3
        0x00, 0x06, // read quantity 6
        0x00, 0x0E, // write address 14
        0x00, 0x03, // write quantity 3
        0x06, // byte count 6
        0x00, 0xFF, // register 14 = 255
        0x01, 0x00, // register 15 = 256
        0xFF, 0xFF, // register 16 = 65535
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function::READ_WRITE_MULTIPLE_REGISTERS);
    assert_eq!(
        req.access,
        Access::ReadWrite {
            read: Span {
                address: 3,
                quantity: 6
            },
            write: Span {
                address: 14,
                quantity: 3
            },
        }
    );
    assert_eq!(
        req.written.registers().collect::<Vec<_>>(),
        [(14, 255), (15, 256), (16, 65535)]
    );
}

#[test]
fn decodes_read_fifo_queue() {
    let adu = [
        0x00, 0x18, // transaction id 24
        0x00, 0x00, // protocol id 0
        0x00, 0x04, // length 4
        0x01, // unit 1
        0x18, // read FIFO queue
        0x04, 0xDE, // FIFO pointer address 1246
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function(24));
    assert_eq!(req.access, read(Table::FifoQueue, 1246, 1));
}

#[test]
fn decodes_read_device_identification() {
    let adu = [
        0x00, 0x2B, // transaction id 43
        0x00, 0x00, // protocol id 0
        0x00, 0x05, // length 5
        0x01, // unit 1
        0x2B, // encapsulated interface transport
        0x0E, // MEI type 14: read device identification
        0x01, // read device id code 1: basic
        0x00, // object id 0
    ];
    let req = decode_request(&adu).expect("valid");
    assert_eq!(req.function, Function(43));
    assert_eq!(req.sub_function, Some(0x0E));
    assert_eq!(req.access, Access::None);

    let mut bad_code = adu;
    bad_code[9] = 0x05; // read device id code 5 does not exist
    assert_eq!(
        violation(&bad_code),
        Violation::Malformed("read device id code")
    );

    let long = [
        0x00, 0x2B, // transaction id 43
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x2B, // encapsulated interface transport
        0x0E, // MEI type 14
        0x01, // read device id code 1
        0x00, // object id 0
        0x00, // one byte too many
    ];
    assert_eq!(
        frame_error(&long),
        FrameError::LengthMismatch {
            function: 43,
            expected: 4,
            have: 5
        }
    );
}

#[test]
fn passes_vendor_function_through_as_other() {
    let adu = [
        0x00, 0x5A, // transaction id 90
        0x00, 0x00, // protocol id 0
        0x00, 0x05, // length 5
        0x01, // unit 1
        0x5A, // function 90: Schneider UMAS
        0x00, // UMAS session
        0x02, // UMAS read PLC id
        0x00, // padding
    ];
    let req = decode_request(&adu).expect("framed by the MBAP length alone");
    assert_eq!(req.function, Function(90));
    assert_eq!(req.function.class(), FunctionClass::Other);
    assert_eq!(req.access, Access::None);
    assert_eq!(req.written, Written::Nothing);
    assert_eq!(req.adu(), &adu);
}

#[test]
fn broadcast_write_is_unit_zero_and_a_write() {
    let write = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x00, // unit 0: broadcast
        0x06, // write single register
        0x00, 0x01, // address 1
        0x00, 0x01, // value 1
    ];
    assert!(decode_request(&write).expect("valid").is_broadcast());
    let read = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x00, // unit 0
        0x03, // read holding registers
        0x00, 0x01, // address 1
        0x00, 0x01, // quantity 1
    ];
    assert!(!decode_request(&read).expect("valid").is_broadcast());
}

#[test]
fn debug_of_a_request_hides_the_values_written() {
    let adu = [
        0x00, 0x06, // transaction id 6
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x06, // write single register
        0x00, 0x01, // address 1
        0xBE, 0xEF, // value 0xBEEF = 48879
    ];
    let req = decode_request(&adu).expect("valid");
    let debug = format!("{req:?}");
    assert!(debug.contains("len: 12"), "{debug}");
    assert!(!debug.contains("48879"), "{debug}");
    assert!(!debug.to_lowercase().contains("beef"), "{debug}");
    assert!(!debug.contains("190"), "{debug}"); // 0xBE as a byte
}

// ---------------------------------------------------------------------------------------------
// Protocol limits: well-framed requests that are refused with an exception
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_read_quantities_outside_the_limits() {
    // (function, max): spec §6.1–6.4.
    for (code, max) in [(1u8, 2000u16), (2, 2000), (3, 125), (4, 125)] {
        for quantity in [0, max + 1, u16::MAX] {
            let [q0, q1] = quantity.to_be_bytes();
            let frame = adu(&[
                code, // read function
                0x00, 0x00, // address 0
                q0, q1, // quantity
            ]);
            let v = violation(&frame);
            assert_eq!(
                v,
                Violation::Quantity { quantity, max },
                "FC{code} {quantity}"
            );
            assert_eq!(v.exception(), ExceptionCode::IllegalDataValue);
            assert_eq!(v.exception().code(), 0x03);
        }
        for quantity in [1, max] {
            let [q0, q1] = quantity.to_be_bytes();
            let frame = adu(&[code, 0x00, 0x00, q0, q1]);
            let req = decode_request(&frame).expect("at the limit");
            assert!(
                matches!(req.access, Access::Read(_, span) if span.quantity == quantity),
                "FC{code} {quantity}: {:?}",
                req.access
            );
        }
    }
}

#[test]
fn rejects_write_multiple_coils_quantities_outside_the_limits() {
    // Quantity 0, with a byte count that matches it.
    let zero = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x07, // length 7
        0x01, // unit 1
        0x0F, // write multiple coils
        0x00, 0x00, // address 0
        0x00, 0x00, // quantity 0
        0x00, // byte count 0
    ];
    let v = violation(&zero);
    assert_eq!(
        v,
        Violation::Quantity {
            quantity: 0,
            max: 1968
        }
    );
    assert_eq!(v.exception().code(), 0x03);

    // 1969 coils need 247 bytes: the PDU is 253 bytes, the largest that frames, so only the
    // quantity limit can refuse it.
    let mut pdu = vec![
        0x0F, // write multiple coils
        0x00, 0x00, // address 0
        0x07, 0xB1, // quantity 1969
        0xF7, // byte count 247
    ];
    pdu.extend_from_slice(&[0xAA; 247]);
    let frame = adu(&pdu);
    assert_eq!(frame.len(), MAX_ADU_LEN);
    let v = violation(&frame);
    assert_eq!(
        v,
        Violation::Quantity {
            quantity: 1969,
            max: 1968
        }
    );
    assert_eq!(v.exception().code(), 0x03);

    // 1968 coils in 246 bytes is the largest valid request.
    let mut pdu = vec![
        0x0F, // write multiple coils
        0x00, 0x00, // address 0
        0x07, 0xB0, // quantity 1968
        0xF6, // byte count 246
    ];
    pdu.extend_from_slice(&[0x55; 246]);
    let frame = adu(&pdu);
    let req = decode_request(&frame).expect("at the limit");
    assert_eq!(req.access, write(Table::Coils, 0, 1968));
    let coils: Vec<_> = req.written.coils().collect();
    assert_eq!(coils.len(), 1968);
    assert_eq!(coils[0], (0, true)); // 0x55 = 0b0101_0101, bit 0 first
    assert_eq!(coils[1], (1, false));
    assert_eq!(coils[1967], (1967, false));
}

#[test]
fn rejects_write_multiple_registers_quantities_outside_the_limits() {
    let zero = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x07, // length 7
        0x01, // unit 1
        0x10, // write multiple registers
        0x00, 0x00, // address 0
        0x00, 0x00, // quantity 0
        0x00, // byte count 0
    ];
    let v = violation(&zero);
    assert_eq!(
        v,
        Violation::Quantity {
            quantity: 0,
            max: 123
        }
    );
    assert_eq!(v.exception().code(), 0x03);

    // 124 registers would need 248 bytes, which no frame can carry: the quantity is refused
    // before the byte count is looked at.
    let over = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x07, // length 7
        0x01, // unit 1
        0x10, // write multiple registers
        0x00, 0x00, // address 0
        0x00, 0x7C, // quantity 124
        0xF8, // byte count 248 (none present)
    ];
    let v = violation(&over);
    assert_eq!(
        v,
        Violation::Quantity {
            quantity: 124,
            max: 123
        }
    );
    assert_eq!(v.exception().code(), 0x03);

    // 123 registers in 246 bytes is the largest valid request.
    let mut pdu = vec![
        0x10, // write multiple registers
        0x00, 0x10, // address 16
        0x00, 0x7B, // quantity 123
        0xF6, // byte count 246
    ];
    pdu.extend((0u16..123).flat_map(|i| i.to_be_bytes()));
    let frame = adu(&pdu);
    let req = decode_request(&frame).expect("at the limit");
    assert_eq!(req.access, write(Table::HoldingRegisters, 16, 123));
    let registers: Vec<_> = req.written.registers().collect();
    assert_eq!(registers.len(), 123);
    assert_eq!(registers[0], (16, 0));
    assert_eq!(registers[122], (138, 122));
}

#[test]
fn rejects_read_write_multiple_registers_quantities_outside_the_limits() {
    // (read quantity, write quantity, expected violation).
    let cases = [
        (
            0u16,
            1u16,
            Violation::Quantity {
                quantity: 0,
                max: 125,
            },
        ),
        (
            126,
            1,
            Violation::Quantity {
                quantity: 126,
                max: 125,
            },
        ),
        (
            1,
            0,
            Violation::Quantity {
                quantity: 0,
                max: 121,
            },
        ),
        (
            1,
            122,
            Violation::Quantity {
                quantity: 122,
                max: 121,
            },
        ),
    ];
    for (read_quantity, write_quantity, expected) in cases {
        let [r0, r1] = read_quantity.to_be_bytes();
        let [w0, w1] = write_quantity.to_be_bytes();
        let mut pdu = vec![
            0x17, // read/write multiple registers
            0x00, 0x00, // read address 0
            r0, r1, // read quantity
            0x00, 0x00, // write address 0
            w0, w1,   // write quantity
            0x02, // byte count 2
            0x00, 0x01, // one register
        ];
        if write_quantity == 0 {
            pdu.truncate(10);
            pdu[9] = 0x00; // byte count 0, no data
        }
        let v = violation(&adu(&pdu));
        assert_eq!(v, expected, "read {read_quantity} write {write_quantity}");
        assert_eq!(v.exception().code(), 0x03);
    }

    // Read 125 and write 121 (242 bytes) are the largest valid request.
    let mut pdu = vec![
        0x17, // read/write multiple registers
        0x00, 0x00, // read address 0
        0x00, 0x7D, // read quantity 125
        0x01, 0x00, // write address 256
        0x00, 0x79, // write quantity 121
        0xF2, // byte count 242
    ];
    pdu.extend_from_slice(&[0x00; 242]);
    let frame = adu(&pdu);
    let req = decode_request(&frame).expect("at the limits");
    assert_eq!(
        req.access,
        Access::ReadWrite {
            read: Span {
                address: 0,
                quantity: 125
            },
            write: Span {
                address: 256,
                quantity: 121
            },
        }
    );
    assert_eq!(req.written.registers().count(), 121);
}

#[test]
fn rejects_byte_count_that_does_not_match_quantity() {
    let coils = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x0A, // length 10
        0x01, // unit 1
        0x0F, // write multiple coils
        0x00, 0x13, // address 19
        0x00, 0x0A, // quantity 10: needs 2 bytes
        0x03, // byte count 3
        0xCD, 0x01, 0x00, // 3 data bytes
    ];
    let v = violation(&coils);
    assert_eq!(
        v,
        Violation::ByteCount {
            byte_count: 3,
            quantity: 10,
            needed: 2
        }
    );
    assert_eq!(v.exception().code(), 0x03);

    let registers = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x09, // length 9
        0x01, // unit 1
        0x10, // write multiple registers
        0x00, 0x01, // address 1
        0x00, 0x02, // quantity 2: needs 4 bytes
        0x02, // byte count 2
        0x00, 0x0A, // 2 data bytes
    ];
    let v = violation(&registers);
    assert_eq!(
        v,
        Violation::ByteCount {
            byte_count: 2,
            quantity: 2,
            needed: 4
        }
    );
    assert_eq!(v.exception().code(), 0x03);

    let read_write = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x0C, // length 12
        0x01, // unit 1
        0x17, // read/write multiple registers
        0x00, 0x00, // read address 0
        0x00, 0x01, // read quantity 1
        0x00, 0x00, // write address 0
        0x00, 0x01, // write quantity 1: needs 2 bytes
        0x01, // byte count 1
        0x00, // 1 data byte
    ];
    let v = violation(&read_write);
    assert_eq!(
        v,
        Violation::ByteCount {
            byte_count: 1,
            quantity: 1,
            needed: 2
        }
    );
    assert_eq!(v.exception().code(), 0x03);
}

#[test]
fn rejects_data_shorter_or_longer_than_byte_count() {
    let short = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x09, // length 9
        0x01, // unit 1
        0x10, // write multiple registers
        0x00, 0x01, // address 1
        0x00, 0x02, // quantity 2
        0x04, // byte count 4, as the quantity needs
        0x00, 0x0A, // but only 2 data bytes
    ];
    let v = violation(&short);
    assert_eq!(
        v,
        Violation::BytesPresent {
            byte_count: 4,
            present: 2
        }
    );
    assert_eq!(v.exception().code(), 0x03);

    let long = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x0A, // length 10
        0x01, // unit 1
        0x0F, // write multiple coils
        0x00, 0x00, // address 0
        0x00, 0x08, // quantity 8
        0x01, // byte count 1, as the quantity needs
        0xFF, 0xFF, 0xFF, // but 3 data bytes
    ];
    let v = violation(&long);
    assert_eq!(
        v,
        Violation::BytesPresent {
            byte_count: 1,
            present: 3
        }
    );
    assert_eq!(v.exception().code(), 0x03);
}

#[test]
fn rejects_address_range_past_65535() {
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x03, // read holding registers
        0xFF, 0xFF, // address 65535
        0x00, 0x02, // quantity 2: would read 65535 and 65536
    ];
    let v = violation(&adu);
    assert_eq!(
        v,
        Violation::AddressOverflow {
            address: 65535,
            quantity: 2
        }
    );
    assert_eq!(v.exception(), ExceptionCode::IllegalDataAddress);
    assert_eq!(v.exception().code(), 0x02);

    // The last register alone is fine.
    let last = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x03, // read holding registers
        0xFF, 0xFF, // address 65535
        0x00, 0x01, // quantity 1
    ];
    let req = decode_request(&last).expect("valid");
    let Access::Read(_, span) = req.access else {
        panic!("{:?}", req.access)
    };
    assert_eq!(span.last(), 65535);

    // The same check guards every multi-item function.
    let write = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x0B, // length 11
        0x01, // unit 1
        0x10, // write multiple registers
        0xFF, 0xFF, // address 65535
        0x00, 0x02, // quantity 2
        0x04, // byte count 4
        0x00, 0x01, 0x00, 0x02, // values
    ];
    assert_eq!(
        violation(&write),
        Violation::AddressOverflow {
            address: 65535,
            quantity: 2
        }
    );
    let coils = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x01, // read coils
        0xFF, 0xF0, // address 65520
        0x00, 0x11, // quantity 17: one past 65535
    ];
    assert_eq!(
        violation(&coils),
        Violation::AddressOverflow {
            address: 65520,
            quantity: 17
        }
    );
    let read_write = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x0D, // length 13
        0x01, // unit 1
        0x17, // read/write multiple registers
        0x00, 0x00, // read address 0
        0x00, 0x01, // read quantity 1
        0xFF, 0xFF, // write address 65535
        0x00, 0x01, // write quantity 1: fine
        0x02, // byte count 2
        0x00, 0x01, // value
    ];
    assert!(decode_request(&read_write).is_ok());
    let mut read_write_over = read_write;
    read_write_over[8..10].copy_from_slice(&[0xFF, 0xFF]); // read address 65535
    read_write_over[10..12].copy_from_slice(&[0x00, 0x02]); // read quantity 2
    assert_eq!(
        violation(&read_write_over).exception(),
        ExceptionCode::IllegalDataAddress
    );
}

#[test]
fn rejects_single_coil_value_other_than_on_or_off() {
    for value in [0x0001u16, 0x00FF, 0xFF01, 0xFFFF, 0x1234, 0x0100] {
        let [v0, v1] = value.to_be_bytes();
        let adu = [
            0x00, 0x01, // transaction id 1
            0x00, 0x00, // protocol id 0
            0x00, 0x06, // length 6
            0x01, // unit 1
            0x05, // write single coil
            0x00, 0x01, // address 1
            v0, v1, // value: neither 0xFF00 nor 0x0000
        ];
        let v = violation(&adu);
        assert_eq!(v, Violation::CoilValue(value));
        assert_eq!(v.exception().code(), 0x03);
    }
}

#[test]
fn refuses_tokio_modbus_crasher_with_an_exception() {
    // tokio-modbus computes the byte count from `quantity` in u16 arithmetic and panics on
    // this frame; we answer it with "illegal data value".
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x0D, // length 13
        0x01, // unit 1
        0x0F, // write multiple coils
        0x00, 0x00, // address 0
        0x0F, 0x06, // quantity 3846
        0x06, // byte count 6
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, // 6 data bytes
    ];
    assert_eq!(split_frame(&adu), Ok(Some((&adu[..], &[][..]))));
    match decode_request(&adu) {
        Err(RequestError::Violation {
            header,
            function,
            violation,
        }) => {
            assert_eq!(
                violation,
                Violation::Quantity {
                    quantity: 0x0F06,
                    max: 1968
                }
            );
            assert_eq!(violation.exception().code(), 0x03);
            assert_eq!(header.transaction_id, 1);
            assert_eq!(function, 0x0F);
            assert_eq!(
                exception_response(&header, function, violation.exception()),
                [0x00, 0x01, 0x00, 0x00, 0x00, 0x03, 0x01, 0x8F, 0x03]
            );
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Framing errors
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_pdu_too_short_for_its_function() {
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x03, // length 3: unit + 2-byte PDU
        0x01, // unit 1
        0x03, // read holding registers: needs 4 more bytes
        0x00, // half an address
    ];
    assert_eq!(frame_len(&adu), Ok(Some(9)));
    assert_eq!(
        frame_error(&adu),
        FrameError::Truncated {
            function: 3,
            need: 5,
            have: 2
        }
    );

    let registers = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x10, // write multiple registers: needs at least 5 more bytes
        0x00, 0x01, // address 1
        0x00, 0x01, // quantity 1, no byte count
    ];
    assert_eq!(
        frame_error(&registers),
        FrameError::Truncated {
            function: 16,
            need: 6,
            have: 5
        }
    );

    let read_write = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x0A, // length 10
        0x01, // unit 1
        0x17, // read/write multiple registers: needs at least 9 more bytes
        0x00, 0x00, 0x00, 0x01, // read address, read quantity
        0x00, 0x00, 0x00, 0x01, // write address, write quantity; no byte count
    ];
    assert_eq!(
        frame_error(&read_write),
        FrameError::Truncated {
            function: 23,
            need: 10,
            have: 9
        }
    );
}

#[test]
fn rejects_fixed_size_pdu_with_extra_bytes() {
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x07, // length 7: one byte too many
        0x01, // unit 1
        0x03, // read holding registers
        0x00, 0x00, // address 0
        0x00, 0x01, // quantity 1
        0x00, // extra byte
    ];
    assert_eq!(
        frame_error(&adu),
        FrameError::LengthMismatch {
            function: 3,
            expected: 5,
            have: 6
        }
    );

    let no_data = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x03, // length 3
        0x01, // unit 1
        0x07, // read exception status: takes no data
        0x00, // extra byte
    ];
    assert_eq!(
        frame_error(&no_data),
        FrameError::LengthMismatch {
            function: 7,
            expected: 1,
            have: 2
        }
    );

    let mask = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x09, // length 9
        0x01, // unit 1
        0x16, // mask write register
        0x00, 0x04, 0x00, 0xF2, 0x00, 0x25, // address, AND mask, OR mask
        0x00, // extra byte
    ];
    assert_eq!(
        frame_error(&mask),
        FrameError::LengthMismatch {
            function: 22,
            expected: 7,
            have: 8
        }
    );
}

#[test]
fn rejects_protocol_id_other_than_zero() {
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x01, // protocol id 1
        0x00, 0x06, // length 6
        0x01, // unit 1
        0x03, // read holding registers
        0x00, 0x00, // address 0
        0x00, 0x01, // quantity 1
    ];
    // Refused from the header alone: the first 7 bytes are enough.
    assert_eq!(frame_len(&adu[..7]), Err(FrameError::ProtocolId(1)));
    assert_eq!(split_frame(&adu[..7]), Err(FrameError::ProtocolId(1)));
    assert_eq!(frame_error(&adu), FrameError::ProtocolId(1));
    assert_eq!(decode_response(&adu), Err(FrameError::ProtocolId(1)));

    let mut other = adu;
    other[2..4].copy_from_slice(&[0xFF, 0xFF]); // protocol id 0xFFFF
    assert_eq!(frame_len(&other), Err(FrameError::ProtocolId(0xFFFF)));
}

#[test]
fn rejects_mbap_length_outside_2_to_254_from_the_header() {
    for length in [0u16, 1, 255, 256, 0xFFFF] {
        let [l0, l1] = length.to_be_bytes();
        let header = [
            0x00, 0x01, // transaction id 1
            0x00, 0x00, // protocol id 0
            l0, l1,   // length
            0x01, // unit 1
        ];
        // Before any body byte is buffered.
        assert_eq!(frame_len(&header), Err(FrameError::Length(length)));
        assert_eq!(split_frame(&header), Err(FrameError::Length(length)));
        assert_eq!(
            frame_error(&header),
            FrameError::Length(length),
            "length {length}"
        );
        assert_eq!(decode_response(&header), Err(FrameError::Length(length)));
    }
    for (length, total) in [(2u16, 8usize), (254, 260)] {
        let [l0, l1] = length.to_be_bytes();
        let header = [
            0x00, 0x01, // transaction id 1
            0x00, 0x00, // protocol id 0
            l0, l1,   // length at a bound
            0x01, // unit 1
        ];
        assert_eq!(frame_len(&header), Ok(Some(total)));
        assert_eq!(split_frame(&header), Ok(None));
    }
}

#[test]
fn needs_seven_bytes_for_the_header() {
    let header = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x06, // length 6
        0x01, // unit 1
    ];
    for n in 0..7 {
        assert_eq!(frame_len(&header[..n]), Ok(None), "{n} bytes");
        assert_eq!(split_frame(&header[..n]), Ok(None), "{n} bytes");
    }
    assert_eq!(frame_len(&header), Ok(Some(12)));
}

#[test]
fn splits_one_frame_off_a_pipelined_buffer() {
    let buf = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x02, // length 2
        0x01, // unit 1
        0x07, // read exception status
        0x00, 0x02, // next frame: transaction id 2
        0x00, 0x00, // protocol id 0
        0x00, // half a length
    ];
    let (frame, rest) = split_frame(&buf).expect("valid").expect("complete");
    assert_eq!(frame, &buf[..8]);
    assert_eq!(rest, &buf[8..]);
    assert_eq!(split_frame(rest), Ok(None));
    // decode_request takes exactly one frame, never a buffer with more after it.
    assert_eq!(frame_error(&buf), FrameError::Length(2));
    assert_eq!(decode_response(&buf), Err(FrameError::Length(2)));
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

#[test]
fn builds_exception_response_bytes() {
    let header = Mbap {
        transaction_id: 0xABCD,
        protocol_id: 0,
        length: 6,
        unit_id: 0x11,
    };
    assert_eq!(
        exception_response(&header, 0x10, ExceptionCode::IllegalDataAddress),
        [
            0xAB, 0xCD, // the request's transaction id
            0x00, 0x00, // protocol id 0
            0x00, 0x03, // length 3: unit + function + code
            0x11, // the request's unit
            0x90, // 0x10 | 0x80
            0x02, // illegal data address
        ]
    );
    assert_eq!(
        exception_response(&header, 0x5A, ExceptionCode::IllegalFunction),
        [0xAB, 0xCD, 0x00, 0x00, 0x00, 0x03, 0x11, 0xDA, 0x01]
    );
    let codes = [
        (ExceptionCode::IllegalFunction, 0x01),
        (ExceptionCode::IllegalDataAddress, 0x02),
        (ExceptionCode::IllegalDataValue, 0x03),
        (ExceptionCode::ServerDeviceFailure, 0x04),
        (ExceptionCode::ServerDeviceBusy, 0x06),
        (ExceptionCode::GatewayPathUnavailable, 0x0A),
        (ExceptionCode::GatewayTargetFailedToRespond, 0x0B),
    ];
    for (code, byte) in codes {
        assert_eq!(code.code(), byte);
        let adu = exception_response(&header, 0x03, code);
        assert_eq!(adu[8], byte);
        let response = decode_response(&adu).expect("our own exception response is valid");
        assert_eq!(response.exception(), Some(byte));
    }
}

#[test]
fn decodes_normal_response_and_checks_it_answers_the_request() {
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x07, // length 7
        0x01, // unit 1
        0x03, // read holding registers
        0x04, // byte count 4
        0x00, 0x00, // register 0
        0x00, 0x01, // register 1
    ];
    let response = decode_response(&adu).expect("valid");
    assert_eq!(response.function, 0x03);
    assert_eq!(response.transaction_id(), 1);
    assert_eq!(response.header.unit_id, 1);
    assert_eq!(response.exception(), None);
    assert_eq!(response.adu(), &adu);
    assert_eq!(response.answers(Function::READ_HOLDING_REGISTERS), Ok(()));
    assert_eq!(
        response.answers(Function::READ_INPUT_REGISTERS),
        Err(FrameError::FunctionMismatch {
            expected: 4,
            got: 3
        })
    );
}

#[test]
fn decodes_exception_response_and_checks_it_answers_the_request() {
    let adu = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x03, // length 3
        0x01, // unit 1
        0x83, // read holding registers | 0x80
        0x02, // illegal data address
    ];
    let response = decode_response(&adu).expect("valid");
    assert_eq!(response.function, 0x83);
    assert_eq!(response.exception(), Some(0x02));
    assert_eq!(response.answers(Function::READ_HOLDING_REGISTERS), Ok(()));
    assert_eq!(
        response.answers(Function::WRITE_MULTIPLE_REGISTERS),
        Err(FrameError::FunctionMismatch {
            expected: 16,
            got: 0x83
        })
    );

    // An exception response is exactly function + code.
    let long = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x04, // length 4
        0x01, // unit 1
        0x83, // exception
        0x02, // code
        0x00, // extra byte
    ];
    assert_eq!(
        decode_response(&long),
        Err(FrameError::LengthMismatch {
            function: 0x83,
            expected: 2,
            have: 3
        })
    );
    let short = [
        0x00, 0x01, // transaction id 1
        0x00, 0x00, // protocol id 0
        0x00, 0x02, // length 2
        0x01, // unit 1
        0x83, // exception without a code
    ];
    assert_eq!(
        decode_response(&short),
        Err(FrameError::LengthMismatch {
            function: 0x83,
            expected: 2,
            have: 1
        })
    );
}

#[test]
fn function_code_0_exception_space_codes_and_other_mei_types_are_illegal_functions() {
    for pdu in [
        &[0x00, 1, 2][..],
        &[0x83, 0, 0, 0, 1],
        &[0xFF],
        &[43, 0x0D, 1, 2, 3],
        &[43, 0x01],
    ] {
        let mut adu = vec![0, 1, 0, 0, 0, 0, 1];
        adu[5] = u8::try_from(pdu.len() + 1).expect("small");
        adu.extend_from_slice(pdu);
        match decode_request(&adu) {
            Err(RequestError::Violation { violation, .. }) => {
                assert_eq!(
                    violation.exception(),
                    ExceptionCode::IllegalFunction,
                    "{pdu:02x?}"
                );
            }
            other => panic!("{pdu:02x?}: {other:?}"),
        }
    }
}

#[test]
fn a_response_answers_only_the_request_it_fits() {
    let read = [0, 9, 0, 0, 0, 6, 1, 3, 0, 10, 0, 2]; // tid 9, FC3 address 10 quantity 2
    let ok = [0, 9, 0, 0, 0, 7, 1, 3, 4, 0, 10, 0, 11];
    assert!(response_answers(&read, &ok));
    let other_tid = [0, 8, 0, 0, 0, 7, 1, 3, 4, 0, 10, 0, 11];
    assert!(!response_answers(&read, &other_tid));
    let short = [0, 9, 0, 0, 0, 5, 1, 3, 2, 0, 10]; // one register for a read of two
    assert!(!response_answers(&read, &short));
    let exception = [0, 9, 0, 0, 0, 3, 1, 0x83, 0x02];
    assert!(response_answers(&read, &exception));
    let wrong_function = [0, 9, 0, 0, 0, 3, 1, 0x84, 0x02];
    assert!(!response_answers(&read, &wrong_function));
    let write = [0, 1, 0, 0, 0, 6, 1, 6, 0, 105, 0, 7]; // FC6 register 105 = 7
    assert!(response_answers(&write, &write));
    let other_echo = [0, 1, 0, 0, 0, 6, 1, 6, 0, 106, 0, 7];
    assert!(!response_answers(&write, &other_echo));
    let multi = [0, 2, 0, 0, 0, 11, 1, 16, 0, 100, 0, 2, 4, 0, 1, 0, 2];
    assert!(response_answers(
        &multi,
        &[0, 2, 0, 0, 0, 6, 1, 16, 0, 100, 0, 2]
    ));
    assert!(!response_answers(
        &multi,
        &[0, 2, 0, 0, 0, 6, 1, 16, 0, 100, 0, 3]
    ));
    assert!(!response_answers(&[], &ok));
}
