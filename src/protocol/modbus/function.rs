//! Modbus function codes: names, classes and the presets plant engineers know from industrial
//! firewalls.

use std::fmt;

/// A Modbus function code as sent on the wire (a request's code is 1..=127).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Function(pub u8);

/// What a function does to the device, for presets and audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionClass {
    Read,
    Write,
    Diagnostic,
    /// Reserved, user-defined and vendor codes (e.g. 90, Schneider's UMAS).
    Other,
}

/// Every public function code of the Modbus Application Protocol V1.1b3 with its snake_case
/// name and class.
const PUBLIC: &[(u8, &str, FunctionClass)] = &[
    (1, "read_coils", FunctionClass::Read),
    (2, "read_discrete_inputs", FunctionClass::Read),
    (3, "read_holding_registers", FunctionClass::Read),
    (4, "read_input_registers", FunctionClass::Read),
    (5, "write_single_coil", FunctionClass::Write),
    (6, "write_single_register", FunctionClass::Write),
    (7, "read_exception_status", FunctionClass::Diagnostic),
    (8, "diagnostics", FunctionClass::Diagnostic),
    (11, "get_comm_event_counter", FunctionClass::Diagnostic),
    (12, "get_comm_event_log", FunctionClass::Diagnostic),
    (15, "write_multiple_coils", FunctionClass::Write),
    (16, "write_multiple_registers", FunctionClass::Write),
    (17, "report_server_id", FunctionClass::Diagnostic),
    (20, "read_file_record", FunctionClass::Read),
    (21, "write_file_record", FunctionClass::Write),
    (22, "mask_write_register", FunctionClass::Write),
    (23, "read_write_multiple_registers", FunctionClass::Write),
    (24, "read_fifo_queue", FunctionClass::Read),
    (43, "read_device_identification", FunctionClass::Diagnostic),
];

/// Presets, as industrial firewalls name them. Vendor codes are never in a preset: a rule must
/// name them by number.
///
/// File records (20, 21) are only in `programming`: they address files and records, not the
/// register tables, so a rule's address limits cannot constrain them (a rule with address
/// limits or value bounds never allows them).
pub const PRESETS: &[(&str, &[u8])] = &[
    ("read_only", &[1, 2, 3, 4, 24]),
    ("read_write", &[1, 2, 3, 4, 5, 6, 15, 16, 22, 23, 24]),
    (
        "programming",
        &[
            1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43,
        ],
    ),
];

/// The function codes of a preset, by name.
pub fn preset(name: &str) -> Option<&'static [u8]> {
    PRESETS
        .iter()
        .find(|(preset, _)| *preset == name)
        .map(|(_, codes)| *codes)
}

impl Function {
    pub const READ_COILS: Function = Function(1);
    pub const READ_DISCRETE_INPUTS: Function = Function(2);
    pub const READ_HOLDING_REGISTERS: Function = Function(3);
    pub const READ_INPUT_REGISTERS: Function = Function(4);
    pub const WRITE_SINGLE_COIL: Function = Function(5);
    pub const WRITE_SINGLE_REGISTER: Function = Function(6);
    pub const WRITE_MULTIPLE_COILS: Function = Function(15);
    pub const WRITE_MULTIPLE_REGISTERS: Function = Function(16);
    pub const MASK_WRITE_REGISTER: Function = Function(22);
    pub const READ_WRITE_MULTIPLE_REGISTERS: Function = Function(23);

    /// The snake_case name of a public function, or `None` for reserved and vendor codes.
    pub fn name(self) -> Option<&'static str> {
        PUBLIC
            .iter()
            .find(|(code, _, _)| *code == self.0)
            .map(|(_, name, _)| *name)
    }

    pub fn class(self) -> FunctionClass {
        PUBLIC
            .iter()
            .find(|(code, _, _)| *code == self.0)
            .map_or(FunctionClass::Other, |(_, _, class)| *class)
    }

    /// A public function by its snake_case name (`diagnostics`, `read_coils`, …).
    pub fn from_name(name: &str) -> Option<Function> {
        PUBLIC
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(code, _, _)| Function(*code))
    }

    /// All public function names, for error messages.
    pub fn names() -> impl Iterator<Item = &'static str> {
        PUBLIC.iter().map(|(_, name, _)| *name)
    }
}

impl fmt::Debug for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Function {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "function {}", self.0),
        }
    }
}

impl serde::Serialize for Function {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.0)
    }
}
