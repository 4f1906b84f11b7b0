use super::*;

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
