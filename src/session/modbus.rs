//! The Modbus relay of one session.
//!
//! One task, one `select!` loop over the client, the upstream connection and the nearest
//! deadline. Every request gets a slot in `queue` in arrival order; slots are answered to the
//! client strictly in that order, whether the answer comes from the device (a matched response)
//! or from the gateway (a denial, a protocol violation, 0x0A/0x0B). Allowed requests are
//! forwarded as their original bytes, at most `upstream_in_flight` at a time per upstream
//! connection (1 by default: many PLC stacks answer only the first of several requests that
//! arrive together). More than `max_outstanding` slots → exception 0x06 at once.

use super::{Closed, LivePolicy, SessionContext, SessionStats};
use crate::audit::{AuditEvent, CloseReason, ModbusSummary, Side};
use crate::config::OnDeny;
use crate::policy::Decision;
use crate::protocol::modbus::{
    self, Access, ExceptionCode, FunctionClass, MAX_ADU_LEN, Mbap, Request, RequestError,
};
use bytes::{Buf, BytesMut};
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout};

/// Client read buffer: several maximal ADUs, so a pipelining client is read in one syscall.
const CLIENT_BUF: usize = 4 * MAX_ADU_LEN;
/// Upstream read buffer: a maximal response plus the start of the next.
const UPSTREAM_BUF: usize = 2 * MAX_ADU_LEN;

/// An ADU held inline (≤ 260 bytes): no allocation per request.
#[derive(Clone, Copy)]
struct Adu {
    len: u16,
    bytes: [u8; MAX_ADU_LEN],
}

impl Adu {
    fn new(src: &[u8]) -> Adu {
        let mut bytes = [0u8; MAX_ADU_LEN];
        let len = src.len().min(MAX_ADU_LEN);
        bytes[..len].copy_from_slice(&src[..len]);
        Adu {
            len: len as u16,
            bytes,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

enum SlotState {
    /// Allowed, waiting for its turn on the upstream connection.
    Queued,
    /// Written upstream; the device must answer by `deadline`.
    InFlight { deadline: Instant },
    /// The answer to send to the client (the device's response or the gateway's exception).
    Ready,
}

struct Slot {
    header: Mbap,
    function: u8,
    /// The request until it is answered, then the answer.
    adu: Adu,
    state: SlotState,
}

struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
    /// When a request was last written or a response read: an idle connection is released
    /// after the service's `upstream_idle_timeout`, so idle sessions do not hold the PLC's
    /// few connection slots.
    last_used: Instant,
    _permit: OwnedSemaphorePermit,
}

struct Relay<'a> {
    ctx: &'a SessionContext,
    queue: VecDeque<Slot>,
    upstream: Option<Upstream>,
    out: Vec<u8>,
}

pub(super) async fn relay<S>(stream: S, ctx: &SessionContext, stats: &mut SessionStats) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // No split into halves: the client is only written between polls of the select below,
    // so one owner suffices and no lock is taken per read or write.
    let mut client = stream;
    let closed = relay_loop(&mut client, ctx, stats).await;
    // A TLS close_notify, so the client sees a clean end rather than a truncated stream.
    let _ = timeout(ctx.frame_timeout, client.shutdown()).await;
    closed
}

async fn relay_loop<S>(client: &mut S, ctx: &SessionContext, stats: &mut SessionStats) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut live = LivePolicy::new(ctx);
    let mut relay = Relay {
        ctx,
        queue: VecDeque::new(),
        upstream: None,
        out: Vec::new(),
    };
    let mut buf = BytesMut::with_capacity(CLIENT_BUF);
    let mut shutdown = ctx.shutdown.clone();
    let mut last_activity = Instant::now();
    let mut partial_since: Option<Instant> = None;
    // One timer for the whole session. It is moved earlier when a nearer deadline appears and
    // otherwise left alone: a later deadline is picked up when the armed one fires (and finds
    // nothing due), so the per-request hot path does not touch the timer wheel.
    let timer = tokio::time::sleep_until(last_activity + ctx.idle_timeout);
    tokio::pin!(timer);
    // The handshake checked the certificate's validity once; a session must not outlive it.
    let certificate_expires = {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let left = u64::try_from(ctx.identity.not_after.saturating_sub(now)).unwrap_or(0);
        last_activity + std::time::Duration::from_secs(left)
    };

    loop {
        // The nearest deadline: a device that must answer, a frame that must finish, an idle
        // upstream connection to release, or the session's idle timeout.
        let deadline = [
            relay.next_response_deadline(),
            partial_since.map(|t| t + ctx.frame_timeout),
            relay.upstream_idle_deadline(),
            Some(last_activity + ctx.idle_timeout),
            Some(certificate_expires),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(last_activity + ctx.idle_timeout);
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
        }
        let reserve = CLIENT_BUF.saturating_sub(buf.len()).max(MAX_ADU_LEN);
        buf.reserve(reserve);

        tokio::select! {
            read = client.read_buf(&mut buf) => {
                let n = match read {
                    Ok(0) => return CloseReason::ClientClosed,
                    Ok(n) => n,
                    // Most Modbus clients just close TCP, without a TLS close_notify.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        return CloseReason::ClientClosed;
                    }
                    Err(e) => return CloseReason::ClientError { detail: e.to_string() },
                };
                stats.bytes_from_client += n as u64;
                last_activity = Instant::now();
                let consumed = match relay.client_frames(&mut buf, &mut live, stats) {
                    Ok(consumed) => consumed,
                    Err(closed) => {
                        // Answers already complete at the front of the queue go out before the
                        // close; requests still waiting for the device are dropped with it.
                        let _ = relay.flush(client, stats).await;
                        return closed;
                    }
                };
                // The frame deadline runs from the first byte of the frame now at the front.
                partial_since = if buf.is_empty() {
                    None
                } else if consumed {
                    Some(last_activity)
                } else {
                    partial_since.or(Some(last_activity))
                };
            }
            read = read_upstream(&mut relay.upstream) => {
                relay.upstream_bytes(read);
            }
            () = &mut timer => {
                let now = Instant::now();
                // Re-armed at the top of the loop to whatever is due next.
                timer.as_mut().reset(now + ctx.idle_timeout);
                if certificate_expires <= now {
                    return CloseReason::CertificateExpired;
                }
                if relay.next_response_deadline().is_some_and(|d| d <= now) {
                    relay.response_timeout(now);
                } else if partial_since.is_some_and(|t| t + ctx.frame_timeout <= now) {
                    return CloseReason::FrameTimeout;
                } else if relay.queue.is_empty() && last_activity + ctx.idle_timeout <= now {
                    return CloseReason::IdleTimeout;
                } else if relay.upstream_idle_deadline().is_some_and(|d| d <= now) {
                    relay.upstream = None;
                }
            }
            _ = shutdown.changed() => return CloseReason::Shutdown,
        }

        relay.pump().await;
        if let Err(e) = relay.flush(client, stats).await {
            return CloseReason::ClientError { detail: e };
        }
    }
}

/// Reads from the upstream connection, or waits forever when there is none.
async fn read_upstream(upstream: &mut Option<Upstream>) -> std::io::Result<usize> {
    match upstream {
        Some(u) => {
            u.buf
                .reserve(UPSTREAM_BUF.saturating_sub(u.buf.len()).max(MAX_ADU_LEN));
            u.stream.read_buf(&mut u.buf).await
        }
        None => std::future::pending().await,
    }
}

fn is_read(function: u8) -> bool {
    modbus::Function(function).class() == FunctionClass::Read
}

/// What audit says about a request: function, unit, addresses; never values.
pub(crate) fn summary(request: &Request<'_>) -> ModbusSummary {
    let mut s = header_summary(&request.header, request.function.0);
    match request.access {
        Access::None => {}
        Access::Read(_, span) | Access::Write(_, span) => {
            s.address = Some(span.address);
            s.quantity = Some(span.quantity);
        }
        Access::ReadWrite { read, write } => {
            s.address = Some(read.address);
            s.quantity = Some(read.quantity);
            s.write_address = Some(write.address);
            s.write_quantity = Some(write.quantity);
        }
    }
    s
}

/// A summary from the header alone (for requests that did not decode).
fn header_summary(header: &Mbap, function: u8) -> ModbusSummary {
    ModbusSummary {
        transaction_id: header.transaction_id,
        unit: header.unit_id,
        function,
        function_name: modbus::Function(function).name(),
        address: None,
        quantity: None,
        write_address: None,
        write_quantity: None,
    }
}

impl Relay<'_> {
    fn next_response_deadline(&self) -> Option<Instant> {
        self.queue
            .iter()
            .filter_map(|s| match s.state {
                SlotState::InFlight { deadline } => Some(deadline),
                _ => None,
            })
            .min()
    }

    /// When the upstream connection, unused and with nothing pending, is to be released.
    fn upstream_idle_deadline(&self) -> Option<Instant> {
        let upstream = self.upstream.as_ref()?;
        self.queue
            .is_empty()
            .then(|| upstream.last_used + self.ctx.service.upstream_idle_timeout)
    }

    fn in_flight(&self) -> usize {
        self.queue
            .iter()
            .filter(|s| matches!(s.state, SlotState::InFlight { .. }))
            .count()
    }

    /// A slot answered by the gateway itself.
    fn answer_locally(&mut self, header: Mbap, function: u8, code: ExceptionCode) {
        let exception = modbus::exception_response(&header, function, code);
        self.queue.push_back(Slot {
            header,
            function,
            adu: Adu::new(&exception),
            state: SlotState::Ready,
        });
    }

    fn emit_gateway_exception(
        &self,
        summary: ModbusSummary,
        code: ExceptionCode,
        side: Side,
        reason: &str,
    ) {
        self.ctx.audit.emit(AuditEvent::GatewayException {
            session: self.ctx.id,
            identity: self.ctx.identity.id.clone(),
            service: self.ctx.service.name.clone(),
            request: summary,
            exception: code.code(),
            side,
            reason: reason.to_string(),
        });
    }

    /// Decodes and decides every complete frame in `buf`; says whether any was consumed.
    fn client_frames(
        &mut self,
        buf: &mut BytesMut,
        live: &mut LivePolicy,
        stats: &mut SessionStats,
    ) -> Result<bool, Closed> {
        let mut consumed = false;
        loop {
            let frame_len = match modbus::frame_len(buf) {
                Ok(Some(n)) if buf.len() >= n => n,
                Ok(_) => return Ok(consumed),
                Err(e) => return Err(self.framing_error(e.to_string())),
            };
            let request = match modbus::decode_request(&buf[..frame_len]) {
                Ok(r) => Some(r),
                Err(RequestError::Frame(e)) => return Err(self.framing_error(e.to_string())),
                Err(RequestError::Violation {
                    header,
                    function,
                    violation,
                }) => {
                    stats.requests += 1;
                    stats.denied += 1;
                    let code = violation.exception();
                    self.ctx.audit.emit(AuditEvent::ProtocolViolation {
                        session: self.ctx.id,
                        identity: self.ctx.identity.id.clone(),
                        service: self.ctx.service.name.clone(),
                        request: header_summary(&header, function),
                        violation: violation.to_string(),
                        exception: code.code(),
                    });
                    self.admit_local(header, function, code);
                    None
                }
            };
            if let Some(request) = request {
                stats.requests += 1;
                self.request(&request, live, stats)?;
            }
            buf.advance(frame_len);
            consumed = true;
        }
    }

    /// Whether the session has `max_outstanding` requests waiting for their answers.
    fn full(&self) -> bool {
        self.queue.len() >= self.ctx.service.max_outstanding
    }

    /// Queues a gateway answer, or sends 0x06 at once when the session is over its bound.
    fn admit_local(&mut self, header: Mbap, function: u8, code: ExceptionCode) {
        if self.full() {
            self.busy(header, function);
        } else {
            self.answer_locally(header, function, code);
        }
    }

    /// Exception 0x06 out of order: the client has too many requests outstanding.
    fn busy(&mut self, header: Mbap, function: u8) {
        let exception =
            modbus::exception_response(&header, function, ExceptionCode::ServerDeviceBusy);
        self.out.extend_from_slice(&exception);
        self.emit_gateway_exception(
            header_summary(&header, function),
            ExceptionCode::ServerDeviceBusy,
            Side::Local,
            "max_outstanding requests reached",
        );
    }

    fn request(
        &mut self,
        request: &Request<'_>,
        live: &mut LivePolicy,
        stats: &mut SessionStats,
    ) -> Result<(), Closed> {
        let header = request.header;
        let function = request.function.0;
        if self.full() {
            stats.denied += 1;
            self.busy(header, function);
            return Ok(());
        }
        let Some((policy, subject)) = live.refresh() else {
            return Err(CloseReason::AccessRevoked);
        };
        match policy.decide(self.ctx.service_id, subject, request) {
            Decision::Deny { rule, reason } => {
                stats.denied += 1;
                let code = match self.ctx.service.on_deny {
                    OnDeny::Reset => None,
                    OnDeny::IllegalDataAddress if !reason.is_function_denial() => {
                        Some(ExceptionCode::IllegalDataAddress)
                    }
                    _ => Some(ExceptionCode::IllegalFunction),
                };
                self.ctx.audit.emit(AuditEvent::RequestDenied {
                    session: self.ctx.id,
                    identity: self.ctx.identity.id.clone(),
                    service: self.ctx.service.name.clone(),
                    request: summary(request),
                    rule: rule.map(|r| policy.rule_id(r).to_string()),
                    reason,
                    exception: code.map(ExceptionCode::code),
                });
                match code {
                    Some(code) => self.answer_locally(header, function, code),
                    None => return Err(CloseReason::DeniedReset),
                }
            }
            Decision::Allow { rule } => {
                stats.allowed += 1;
                if !self.ctx.service.units.contains(u32::from(request.unit())) {
                    self.emit_gateway_exception(
                        summary(request),
                        ExceptionCode::GatewayPathUnavailable,
                        Side::Local,
                        "no upstream serves this unit",
                    );
                    self.answer_locally(header, function, ExceptionCode::GatewayPathUnavailable);
                    return Ok(());
                }
                let class = request.function.class();
                if class != FunctionClass::Read {
                    let (session, identity, service) = (
                        self.ctx.id,
                        self.ctx.identity.id.clone(),
                        self.ctx.service.name.clone(),
                    );
                    let (request, rule) = (summary(request), policy.rule_id(rule).to_string());
                    self.ctx.audit.emit(if class == FunctionClass::Write {
                        AuditEvent::WriteAllowed {
                            session,
                            identity,
                            service,
                            request,
                            rule,
                        }
                    } else {
                        AuditEvent::RequestAllowed {
                            session,
                            identity,
                            service,
                            request,
                            rule,
                            class,
                        }
                    });
                }
                self.queue.push_back(Slot {
                    header,
                    function,
                    adu: Adu::new(request.adu()),
                    state: SlotState::Queued,
                });
            }
        }
        Ok(())
    }

    fn framing_error(&self, detail: String) -> Closed {
        tracing::info!(session = self.ctx.id, %detail, "closing session on a framing error");
        CloseReason::FramingError { detail }
    }

    /// Sends queued requests upstream while the connection has room, connecting first if
    /// needed. A device that cannot be reached answers 0x0B; no free upstream slot, 0x0A.
    async fn pump(&mut self) {
        let limit = self.ctx.service.upstream_in_flight;
        while self.in_flight() < limit {
            let Some(index) = self
                .queue
                .iter()
                .position(|s| matches!(s.state, SlotState::Queued))
            else {
                return;
            };
            if self.upstream.is_none() {
                match self.connect().await {
                    Ok(u) => self.upstream = Some(u),
                    Err((code, reason)) => {
                        self.fail_queued(code, &reason);
                        return;
                    }
                }
            }
            let Some(upstream) = self.upstream.as_mut() else {
                return;
            };
            let Some(slot) = self.queue.get_mut(index) else {
                return;
            };
            let deadline = Instant::now() + self.ctx.service.response_timeout;
            let write = timeout(
                self.ctx.service.response_timeout,
                upstream.stream.write_all(slot.adu.as_slice()),
            )
            .await;
            upstream.last_used = Instant::now();
            // In flight either way: a failed write fails it (0x0B) with the others in flight.
            slot.state = SlotState::InFlight { deadline };
            match write {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.upstream_failed(&format!("write to device failed: {e}")),
                Err(_) => self.upstream_failed("write to device timed out"),
            }
        }
    }

    async fn connect(&self) -> Result<Upstream, (ExceptionCode, String)> {
        let service = &self.ctx.service;
        let permit = self
            .ctx
            .upstream_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                (
                    ExceptionCode::GatewayPathUnavailable,
                    format!(
                        "max_upstream_connections ({}) reached",
                        service.max_upstream_connections
                    ),
                )
            })?;
        let connect = timeout(
            service.connect_timeout,
            TcpStream::connect(service.upstream.as_str()),
        )
        .await;
        let stream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err((
                    ExceptionCode::GatewayTargetFailedToRespond,
                    format!("cannot connect to {}: {e}", service.upstream),
                ));
            }
            Err(_) => {
                return Err((
                    ExceptionCode::GatewayTargetFailedToRespond,
                    format!("connect to {} timed out", service.upstream),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(Upstream {
            stream,
            buf: BytesMut::with_capacity(UPSTREAM_BUF),
            last_used: Instant::now(),
            _permit: permit,
        })
    }

    /// Turns every queued (not yet sent) slot into a gateway exception.
    fn fail_queued(&mut self, code: ExceptionCode, reason: &str) {
        self.fail_where(
            |s| matches!(s, SlotState::Queued),
            code,
            Side::Upstream,
            reason,
        );
    }

    /// Requests whose device deadline passed get 0x0B. A device that does not answer has lost
    /// track of the stream, so the connection is dropped (a late answer must not meet a later
    /// request) — except when every expired request went to unit 0: a serial gateway never
    /// answers a broadcast, and that says nothing about the connection.
    fn response_timeout(&mut self, now: Instant) {
        let expired =
            |s: &Slot| matches!(s.state, SlotState::InFlight { deadline } if deadline <= now);
        let only_broadcasts = self
            .queue
            .iter()
            .filter(|s| expired(s))
            .all(|s| s.header.unit_id == 0 && !is_read(s.function));
        let reason = "device did not answer within response_timeout";
        if only_broadcasts {
            self.fail_where(
                |s| matches!(s, SlotState::InFlight { deadline } if *deadline <= now),
                ExceptionCode::GatewayTargetFailedToRespond,
                Side::Upstream,
                reason,
            );
        } else {
            self.fail_in_flight(ExceptionCode::GatewayTargetFailedToRespond, reason);
        }
    }

    /// Drops the upstream connection; requests in flight on it get 0x0B.
    fn fail_in_flight(&mut self, code: ExceptionCode, reason: &str) {
        self.upstream = None;
        self.fail_where(
            |s| matches!(s, SlotState::InFlight { .. }),
            code,
            Side::Upstream,
            reason,
        );
    }

    fn upstream_failed(&mut self, reason: &str) {
        self.ctx.audit.emit(AuditEvent::UpstreamError {
            session: self.ctx.id,
            service: self.ctx.service.name.clone(),
            upstream: self.ctx.service.upstream.clone(),
            reason: reason.to_string(),
        });
        self.fail_in_flight(ExceptionCode::GatewayTargetFailedToRespond, reason);
    }

    fn fail_where(
        &mut self,
        select: impl Fn(&SlotState) -> bool,
        code: ExceptionCode,
        side: Side,
        reason: &str,
    ) {
        let mut failed = Vec::new();
        for slot in self.queue.iter_mut().filter(|s| select(&s.state)) {
            failed.push(header_summary(&slot.header, slot.function));
            let exception = modbus::exception_response(&slot.header, slot.function, code);
            slot.adu = Adu::new(&exception);
            slot.state = SlotState::Ready;
        }
        for summary in failed {
            self.emit_gateway_exception(summary, code, side, reason);
        }
    }

    /// Bytes (or EOF, or an error) from the device.
    fn upstream_bytes(&mut self, read: std::io::Result<usize>) {
        match read {
            Ok(0) => return self.upstream_failed("device closed the connection"),
            Err(e) => return self.upstream_failed(&format!("read from device failed: {e}")),
            Ok(_) => {}
        }
        loop {
            let Some(upstream) = self.upstream.as_mut() else {
                return;
            };
            let (response, len) = match modbus::split_frame(&upstream.buf) {
                Ok(Some((frame, _))) => match modbus::decode_response(frame) {
                    Ok(r) => (Adu::new(r.adu()), frame.len()),
                    Err(e) => return self.upstream_failed(&format!("bad response frame: {e}")),
                },
                Ok(None) => return,
                Err(e) => return self.upstream_failed(&format!("bad response frame: {e}")),
            };
            upstream.buf.advance(len);
            self.response(response);
        }
    }

    /// Matches a device response to the request in flight with its transaction id, and checks
    /// that it answers that request (function, and the count or echo the request implies). A
    /// response that answers nothing in flight means the device's stream is out of step with
    /// ours: it is dropped and the upstream connection is reset, so a stale or duplicated answer
    /// can never be handed to a later request that reuses the transaction id.
    fn response(&mut self, adu: Adu) {
        let Some(header) = Mbap::peek(adu.as_slice()) else {
            return;
        };
        if let Some(upstream) = self.upstream.as_mut() {
            upstream.last_used = Instant::now();
        }
        let function = adu.as_slice().get(modbus::MBAP_LEN).copied().unwrap_or(0);
        let slot = self.queue.iter_mut().find(|s| {
            matches!(s.state, SlotState::InFlight { .. })
                && s.header.transaction_id == header.transaction_id
        });
        match slot {
            Some(slot) if modbus::response_answers(slot.adu.as_slice(), adu.as_slice()) => {
                slot.adu = adu;
                slot.state = SlotState::Ready;
            }
            _ => {
                tracing::info!(
                    session = self.ctx.id,
                    transaction_id = header.transaction_id,
                    "dropping a device response that answers no pending request"
                );
                self.ctx.audit.emit(AuditEvent::UnmatchedResponse {
                    session: self.ctx.id,
                    service: self.ctx.service.name.clone(),
                    transaction_id: header.transaction_id,
                    function,
                });
                self.upstream_failed("device sent a response that answers no pending request");
            }
        }
    }

    /// Writes every answer at the front of the queue, in request order, in one write.
    async fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        stats: &mut SessionStats,
    ) -> Result<(), String> {
        while self
            .queue
            .front()
            .is_some_and(|s| matches!(s.state, SlotState::Ready))
        {
            if let Some(slot) = self.queue.pop_front() {
                self.out.extend_from_slice(slot.adu.as_slice());
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        // A client that stops reading is closed after frame_timeout: a few hundred bytes of
        // answers that cannot be delivered in that time will not be.
        let write = async {
            client.write_all(&self.out).await?;
            client.flush().await
        };
        match timeout(self.ctx.frame_timeout, write).await {
            Ok(Ok(())) => {
                stats.bytes_to_client += self.out.len() as u64;
                self.out.clear();
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write to client failed: {e}")),
            Err(_) => Err("client stopped reading".to_string()),
        }
    }
}
