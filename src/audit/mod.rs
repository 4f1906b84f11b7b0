//! Audit events: typed, documented (docs/audit.md), one JSON object per line.
//!
//! The data path never blocks on audit: [`Audit::emit`] stamps the event and puts it in a
//! bounded queue; one writer task drains the queue into the sinks (a file opened for append,
//! and/or stdout) and flushes after every batch. If the queue is ever full, the event is counted
//! and the writer emits an `audit_gap` event with the count as soon as it can, so a loss is
//! never silent. Every event carries a sequence number (gapless within one process, so a SIEM
//! can spot missing lines) and an RFC 3339 UTC timestamp.

mod event;

pub use event::*;

use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};

enum Item {
    Event(OffsetDateTime, Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
}

/// A handle to the audit queue; clone it freely.
#[derive(Clone)]
pub struct Audit {
    tx: mpsc::Sender<Item>,
    dropped: Arc<AtomicU64>,
}

/// Where events go.
#[derive(Clone, Debug, Default)]
pub struct AuditSinks {
    pub file: Option<PathBuf>,
    pub stdout: bool,
}

#[derive(Serialize)]
struct Envelope<'a> {
    seq: u64,
    ts: String,
    gateway: &'a str,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

struct Writer {
    file: Option<std::io::BufWriter<std::fs::File>>,
    /// Events that could not be written (counted into the next `audit_gap`).
    lost: Arc<AtomicU64>,
    stdout: bool,
    gateway: String,
    seq: u64,
    line: Vec<u8>,
}

impl Writer {
    fn write(&mut self, at: OffsetDateTime, event: &AuditEvent) {
        self.seq = self.seq.wrapping_add(1);
        let envelope = Envelope {
            seq: self.seq,
            ts: at.format(&Rfc3339).unwrap_or_default(),
            gateway: &self.gateway,
            event,
        };
        self.line.clear();
        if let Err(e) = serde_json::to_writer(&mut self.line, &envelope) {
            tracing::error!(error = %e, "audit event not serializable");
            return;
        }
        self.line.push(b'\n');
        if let Some(f) = &mut self.file
            && let Err(e) = f.write_all(&self.line)
        {
            tracing::error!(error = %e, "audit file write failed");
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        if self.stdout {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.line);
        }
    }

    fn flush(&mut self) {
        if let Some(f) = &mut self.file
            && let Err(e) = f.flush()
        {
            tracing::error!(error = %e, "audit file flush failed");
        }
        if self.stdout {
            let _ = std::io::stdout().flush();
        }
    }
}

impl Audit {
    /// Opens the sinks and starts the writer task (call inside a tokio runtime).
    pub fn start(gateway: &str, sinks: &AuditSinks, queue: usize) -> std::io::Result<Audit> {
        let file = match &sinks.file {
            Some(path) => {
                if let Some(dir) = path.parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
                let file = options.open(path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("audit file {}: {e}", path.display()))
                })?;
                Some(std::io::BufWriter::with_capacity(64 * 1024, file))
            }
            None => None,
        };
        let (tx, mut rx) = mpsc::channel::<Item>(queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            file,
            lost: dropped.clone(),
            stdout: sinks.stdout,
            gateway: gateway.to_string(),
            seq: 0,
            line: Vec::with_capacity(512),
        };
        let lost = dropped.clone();
        // The writer does blocking file IO; batches are small and a local disk is fast, so a
        // dedicated blocking thread keeps it off the runtime's workers.
        tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(256);
            while rx.blocking_recv_many(&mut batch, 256) > 0 {
                let gap = lost.swap(0, Ordering::Relaxed);
                if gap > 0 {
                    writer.write(
                        OffsetDateTime::now_utc(),
                        &AuditEvent::AuditGap { dropped: gap },
                    );
                }
                let mut flushes = Vec::new();
                for item in batch.drain(..) {
                    match item {
                        Item::Event(at, event) => writer.write(at, &event),
                        Item::Flush(done) => flushes.push(done),
                    }
                }
                writer.flush();
                for done in flushes {
                    let _ = done.send(());
                }
            }
            writer.flush();
        });
        Ok(Audit { tx, dropped })
    }

    /// Queues an event; never waits. A full queue is counted and reported as `audit_gap`.
    pub fn emit(&self, event: AuditEvent) {
        let at = OffsetDateTime::now_utc();
        if self.tx.try_send(Item::Event(at, Box::new(event))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every event emitted before this call is written and flushed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Events lost to a full queue and not yet reported in-band as `audit_gap`.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DenyReason;

    fn line(seq: u64, event: &AuditEvent) -> String {
        let ts = time::macros::datetime!(2026-11-28 06:00:00 UTC);
        let envelope = Envelope {
            seq,
            ts: ts.format(&Rfc3339).expect("format"),
            gateway: "line1-gw",
            event,
        };
        serde_json::to_string(&envelope).expect("serializes")
    }

    /// The schema is a contract with the SIEM (docs/audit.md): these lines must not change.
    #[test]
    fn golden_audit_lines() {
        let request = ModbusSummary {
            transaction_id: 4,
            unit: 1,
            function: 6,
            function_name: Some("write_single_register"),
            address: Some(105),
            quantity: Some(1),
            write_address: None,
            write_quantity: None,
        };
        let denied = AuditEvent::RequestDenied {
            session: 1,
            identity: "spiffe://plant1/line1/hmi/hmi-01".into(),
            service: "plc-line1".into(),
            request,
            rule: Some("operator-setpoints".into()),
            reason: DenyReason::Value {
                address: 105,
                value: 2000,
                min: 0,
                max: 1500,
            },
            exception: Some(1),
        };
        assert_eq!(
            line(4, &denied),
            r#"{"seq":4,"ts":"2026-11-28T06:00:00Z","gateway":"line1-gw","event":"request_denied","session":1,"identity":"spiffe://plant1/line1/hmi/hmi-01","service":"plc-line1","request":{"transaction_id":4,"unit":1,"function":6,"function_name":"write_single_register","address":105,"quantity":1},"rule":"operator-setpoints","reason":{"kind":"value","address":105,"value":2000,"min":0,"max":1500},"exception":1}"#
        );
        let closed = AuditEvent::SessionClosed {
            session: 7,
            peer: "192.0.2.7:50000".parse().expect("addr"),
            identity: "historian-01".into(),
            service: "plc-line1".into(),
            duration_ms: 1500,
            bytes_from_client: 120,
            bytes_to_client: 130,
            requests: 10,
            allowed: 9,
            denied: 1,
            reason: CloseReason::FramingError {
                detail: "MBAP protocol id is 0x0001, Modbus requires 0".into(),
            },
        };
        assert_eq!(
            line(5, &closed),
            r#"{"seq":5,"ts":"2026-11-28T06:00:00Z","gateway":"line1-gw","event":"session_closed","session":7,"peer":"192.0.2.7:50000","identity":"historian-01","service":"plc-line1","duration_ms":1500,"bytes_from_client":120,"bytes_to_client":130,"requests":10,"allowed":9,"denied":1,"reason":{"kind":"framing_error","detail":"MBAP protocol id is 0x0001, Modbus requires 0"}}"#
        );
        let rejected = AuditEvent::TlsRejected {
            peer: "[2001:db8::1]:40000".parse().expect("addr"),
            listener: "modbus-security".into(),
            sni: None,
            reason: "TLS handshake failed: invalid peer certificate: UnknownIssuer".into(),
        };
        assert_eq!(
            line(6, &rejected),
            r#"{"seq":6,"ts":"2026-11-28T06:00:00Z","gateway":"line1-gw","event":"tls_rejected","peer":"[2001:db8::1]:40000","listener":"modbus-security","reason":"TLS handshake failed: invalid peer certificate: UnknownIssuer"}"#
        );
    }

    #[tokio::test]
    async fn events_reach_the_file_in_order_with_gapless_sequence_numbers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sub/audit.jsonl");
        let audit = Audit::start(
            "gw",
            &AuditSinks {
                file: Some(file.clone()),
                stdout: false,
            },
            1024,
        )
        .expect("audit starts");
        for dropped in 0..100 {
            audit.emit(AuditEvent::AuditGap { dropped });
        }
        audit.flush().await;
        let text = std::fs::read_to_string(&file).expect("audit file");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 100);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["seq"], i as u64 + 1);
            assert_eq!(l["dropped"], i as u64);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
    }

    #[tokio::test]
    async fn a_full_queue_is_counted_and_reported_as_a_gap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("audit.jsonl");
        let audit = Audit::start(
            "gw",
            &AuditSinks {
                file: Some(file.clone()),
                stdout: false,
            },
            1,
        )
        .expect("audit starts");
        // The writer may drain between emits, so the count is not fixed; what is fixed is
        // that every event is either written or counted, and a count is reported.
        let n = 2000u64;
        for i in 0..n {
            audit.emit(AuditEvent::UnmatchedResponse {
                session: i,
                service: "s".into(),
                transaction_id: 0,
                function: 3,
            });
        }
        audit.flush().await;
        audit.emit(AuditEvent::GatewayStopping);
        audit.flush().await;
        let text = std::fs::read_to_string(&file).expect("audit file");
        let written = text.matches("unmatched_response").count() as u64;
        let reported: u64 = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
            .filter(|v| v["event"] == "audit_gap")
            .map(|v| v["dropped"].as_u64().expect("count"))
            .sum();
        assert!(
            reported > 0,
            "a 1-slot queue under 2000 events must overflow"
        );
        assert_eq!(written + reported, n);
        assert_eq!(audit.dropped(), 0, "reported counts are reset");
    }
}
