//! The compiled, immutable policy and the pure `decide` function.
//!
//! No IO, no async, no clock. A [`Policy`] is built once from a validated
//! [`PolicyModel`](crate::config::PolicyModel) and indexed per service → per role → per function
//! code, with each function's rules sorted by address interval, so a decision is a few array
//! lookups and a binary search, never a scan of every rule. Default deny: a request no rule
//! allows is denied, with the reason that came closest to being allowed.

pub(crate) mod topics;

use crate::config::{ModbusMatch, MqttMatch, PolicyModel, RoleId, RuleDef, ServiceId};
use crate::protocol::modbus::{Access, Request, Span, Written};
use std::collections::HashMap;
use std::fmt;

/// Index of a rule in the policy, for audit and explain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef(u32);

/// A policy decision. A value: the session logs, counts and answers it; nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        rule: RuleRef,
    },
    Deny {
        /// The rule that came closest (it matched all but `reason`), if any did.
        rule: Option<RuleRef>,
        reason: DenyReason,
    },
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Why a request was denied. Ordered by how far the closest rule got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenyReason {
    /// The identity's roles have no rule for this service at all.
    NoRuleForService,
    /// No rule of the identity's roles allows this function code.
    Function,
    /// Rules allow the function, but not on this unit id.
    Unit,
    /// A non-read request to unit 0 (broadcast) and no rule names unit 0.
    Broadcast,
    /// Rules allow the function on this unit, but not at these addresses.
    Address,
    /// A register value outside the rule's bounds.
    Value {
        address: u16,
        value: u16,
        min: u16,
        max: u16,
    },
    /// A mask write whose result could leave the rule's bounds.
    MaskValue {
        address: u16,
        lowest: u16,
        highest: u16,
        min: u16,
        max: u16,
    },
    /// A coil state the rule does not allow setting.
    Coil { address: u16, on: bool },
    /// MQTT: no rule of these roles has a filter for this topic (publish, delivery) or one
    /// that contains this subscription.
    Topic,
    /// MQTT: a publish above the QoS the matching rule allows.
    Qos { qos: u8, max: u8 },
    /// MQTT: a retained publish and the matching rule does not allow retain.
    Retain,
    /// MQTT: a payload larger than the matching rule allows.
    Payload { size: usize, max: usize },
    /// MQTT: the client id is not the certificate identity (`client_id = "require"`).
    ClientId,
    /// MQTT: a user name that is not the certificate identity (`username = "require"`).
    Username,
}

impl DenyReason {
    fn stage(&self) -> u8 {
        match self {
            DenyReason::NoRuleForService => 0,
            DenyReason::Function => 1,
            DenyReason::Unit => 2,
            DenyReason::Broadcast => 3,
            DenyReason::Address => 4,
            DenyReason::Topic | DenyReason::ClientId | DenyReason::Username => 1,
            DenyReason::Value { .. }
            | DenyReason::MaskValue { .. }
            | DenyReason::Coil { .. }
            | DenyReason::Qos { .. }
            | DenyReason::Retain
            | DenyReason::Payload { .. } => 5,
        }
    }

    /// Whether the denial concerns the function itself rather than where or what it writes
    /// (for `on_deny = "illegal_data_address"`).
    pub fn is_function_denial(&self) -> bool {
        matches!(self, DenyReason::NoRuleForService | DenyReason::Function)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoRuleForService => write!(f, "no rule for this service and these roles"),
            DenyReason::Function => write!(f, "no rule allows this function"),
            DenyReason::Unit => write!(f, "no rule allows this function on this unit"),
            DenyReason::Broadcast => {
                write!(
                    f,
                    "non-read request to unit 0 (broadcast) and no rule names unit 0"
                )
            }
            DenyReason::Address => write!(f, "no rule allows this function at these addresses"),
            DenyReason::Value {
                address,
                value,
                min,
                max,
            } => write!(
                f,
                "value {value} for register {address} outside the bounds {min}..={max}"
            ),
            DenyReason::MaskValue {
                address,
                lowest,
                highest,
                min,
                max,
            } => write!(
                f,
                "mask write to register {address} may set {lowest}..={highest}, outside the bounds {min}..={max}"
            ),
            DenyReason::Coil { address, on } => write!(
                f,
                "setting coil {address} {} is not allowed",
                if *on { "ON" } else { "OFF" }
            ),
            DenyReason::Topic => write!(f, "no rule allows this topic"),
            DenyReason::Qos { qos, max } => {
                write!(f, "QoS {qos} above the rule's max_qos {max}")
            }
            DenyReason::Retain => write!(f, "retain flag set and the rule does not allow retain"),
            DenyReason::Payload { size, max } => {
                write!(
                    f,
                    "payload of {size} bytes above the rule's max_payload {max}"
                )
            }
            DenyReason::ClientId => {
                write!(f, "client id is not the certificate identity")
            }
            DenyReason::Username => {
                write!(f, "user name is not the certificate identity")
            }
        }
    }
}

/// The roles of one identity, resolved against one policy snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subject {
    roles: Vec<RoleId>,
}

impl Subject {
    pub fn roles(&self) -> &[RoleId] {
        &self.roles
    }
}

/// One address interval of one rule, in a function's index.
#[derive(Clone, Copy, Debug)]
struct Interval {
    first: u32,
    last: u32,
    rule: RuleRef,
}

/// The rules of one (service, role, function code).
#[derive(Clone, Debug, Default)]
struct Slot {
    /// Every rule allowing the function, in declaration order.
    rules: Vec<RuleRef>,
    /// The rules' address intervals (read or write, as the function uses), sorted by `first`.
    intervals: Vec<Interval>,
    /// `max_last[i]` = the largest `last` among `intervals[..=i]`: lets a lookup stop as soon
    /// as no earlier interval can reach the request's last address.
    max_last: Vec<u32>,
    /// Units any rule of the slot allows (256 bits), and whether any allows broadcast writes:
    /// lets a denial be explained without checking every rule.
    units_any: [u64; 4],
    broadcast_any: bool,
}

impl Slot {
    fn unit_possible(&self, unit: u8) -> bool {
        self.units_any
            .get(usize::from(unit / 64))
            .is_some_and(|w| w & (1u64 << (unit % 64)) != 0)
    }
}

/// Function codes 0..=127 of one (service, role).
#[derive(Clone, Debug)]
struct RoleIndex {
    functions: Box<[Slot]>,
}

/// The compiled policy.
#[derive(Debug)]
pub struct Policy {
    model: PolicyModel,
    exact: HashMap<String, Vec<RoleId>>,
    /// `(prefix, roles)` for patterns ending in `*`, longest first.
    prefixes: Vec<(String, Vec<RoleId>)>,
    roles_by_name: HashMap<String, RoleId>,
    /// `[service][role]`.
    index: Vec<Vec<Option<RoleIndex>>>,
    /// `[service][role]`: MQTT rules.
    mqtt: Vec<Vec<Option<MqttRoleIndex>>>,
}

/// The MQTT rules of one (service, role): their filters in two tries.
#[derive(Clone, Debug, Default)]
struct MqttRoleIndex {
    publish: topics::Node,
    subscribe: topics::Node,
}

/// An MQTT action to decide, as the session decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttAction<'a> {
    /// A PUBLISH from the client, or the will of its CONNECT.
    Publish {
        topic: &'a str,
        qos: u8,
        retain: bool,
        payload_len: usize,
    },
    /// One filter of a SUBSCRIBE (a `$share/<group>/` prefix already removed).
    Subscribe { filter: &'a str },
    /// A PUBLISH the broker delivers to the client: only on topics the client may subscribe to.
    Deliver { topic: &'a str },
}

/// Which address set of a rule indexes a function: `Some(true)` the write set, `Some(false)`
/// the read set, `None` no address.
fn indexed_by_writes(code: u8) -> Option<bool> {
    match code {
        1..=4 | 24 => Some(false),
        5 | 6 | 15 | 16 | 22 | 23 => Some(true),
        _ => None,
    }
}

impl Policy {
    /// Compiles a validated model. Infallible: validation already happened in `config`.
    pub fn compile(model: PolicyModel) -> Policy {
        let mut exact: HashMap<String, Vec<RoleId>> = HashMap::new();
        let mut prefixes: Vec<(String, Vec<RoleId>)> = Vec::new();
        for i in &model.identities {
            match i.pattern.strip_suffix('*') {
                Some(prefix) => match prefixes.iter_mut().find(|(p, _)| p == prefix) {
                    Some((_, roles)) => roles.extend(&i.roles),
                    None => prefixes.push((prefix.to_string(), i.roles.clone())),
                },
                None => exact.entry(i.pattern.clone()).or_default().extend(&i.roles),
            }
        }
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let roles_by_name = model
            .roles
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.clone(), RoleId(i)))
            .collect();

        let mut index: Vec<Vec<Option<RoleIndex>>> = (0..model.services.len())
            .map(|_| vec![None; model.roles.len()])
            .collect();
        for (n, rule) in model.rules.iter().enumerate() {
            let Some(m) = &rule.modbus else { continue };
            let r = RuleRef(u32::try_from(n).unwrap_or(u32::MAX));
            for service in &rule.services {
                for role in &rule.roles {
                    let Some(entry) = index
                        .get_mut(service.0)
                        .and_then(|roles| roles.get_mut(role.0))
                    else {
                        continue;
                    };
                    let role_index = entry.get_or_insert_with(|| RoleIndex {
                        functions: vec![Slot::default(); 128].into_boxed_slice(),
                    });
                    for code in m.functions.iter() {
                        let Some(slot) = role_index.functions.get_mut(usize::from(code)) else {
                            continue;
                        };
                        slot.rules.push(r);
                        slot.broadcast_any |= m.broadcast;
                        for (first, last) in m.units.ranges() {
                            for unit in *first..=(*last).min(255) {
                                if let Some(w) = slot.units_any.get_mut(unit as usize / 64) {
                                    *w |= 1u64 << (unit % 64);
                                }
                            }
                        }
                        let set = match indexed_by_writes(code) {
                            Some(true) => &m.write_addresses,
                            Some(false) => &m.read_addresses,
                            None => continue,
                        };
                        slot.intervals
                            .extend(set.ranges().iter().map(|(first, last)| Interval {
                                first: *first,
                                last: *last,
                                rule: r,
                            }));
                    }
                }
            }
        }
        for roles in &mut index {
            for role_index in roles.iter_mut().flatten() {
                for slot in role_index.functions.iter_mut() {
                    slot.intervals.sort_by_key(|i| (i.first, i.rule.0));
                    let mut max = 0;
                    slot.max_last = slot
                        .intervals
                        .iter()
                        .map(|i| {
                            max = max.max(i.last);
                            max
                        })
                        .collect();
                }
            }
        }
        let mqtt = Self::compile_mqtt(&model);
        Policy {
            model,
            exact,
            prefixes,
            roles_by_name,
            index,
            mqtt,
        }
    }

    fn compile_mqtt(model: &PolicyModel) -> Vec<Vec<Option<MqttRoleIndex>>> {
        let mut index: Vec<Vec<Option<MqttRoleIndex>>> = (0..model.services.len())
            .map(|_| vec![None; model.roles.len()])
            .collect();
        for (n, rule) in model.rules.iter().enumerate() {
            let Some(m) = &rule.mqtt else { continue };
            let r = RuleRef(u32::try_from(n).unwrap_or(u32::MAX));
            for service in &rule.services {
                for role in &rule.roles {
                    let Some(entry) = index
                        .get_mut(service.0)
                        .and_then(|roles| roles.get_mut(role.0))
                    else {
                        continue;
                    };
                    let role_index = entry.get_or_insert_with(MqttRoleIndex::default);
                    for filter in &m.publish {
                        role_index.publish.insert(filter, r);
                    }
                    for filter in &m.subscribe {
                        role_index.subscribe.insert(filter, r);
                    }
                }
            }
        }
        index
    }

    pub fn model(&self) -> &PolicyModel {
        &self.model
    }

    pub fn rule(&self, r: RuleRef) -> Option<&RuleDef> {
        self.model.rules.get(r.0 as usize)
    }

    /// The rule's id, for audit and explain.
    pub fn rule_id(&self, r: RuleRef) -> &str {
        self.rule(r).map_or("?", |rule| rule.id.as_str())
    }

    pub fn role_name(&self, r: RoleId) -> &str {
        self.model
            .roles
            .get(r.0)
            .map_or("?", |role| role.name.as_str())
    }

    /// Resolves an identity's roles: the identity mapping (exact ids, then every matching
    /// prefix pattern), plus roles asserted by the certificate where the config trusts them.
    /// Certificate roles the policy does not define are ignored.
    pub fn subject(&self, identity: &str, certificate_roles: &[String]) -> Subject {
        let mut roles: Vec<RoleId> = Vec::new();
        if let Some(r) = self.exact.get(identity) {
            roles.extend(r);
        }
        for (prefix, r) in &self.prefixes {
            if identity.starts_with(prefix.as_str()) {
                roles.extend(r);
            }
        }
        roles.extend(
            certificate_roles
                .iter()
                .filter_map(|name| self.roles_by_name.get(name)),
        );
        roles.sort_unstable();
        roles.dedup();
        Subject { roles }
    }

    fn role_index(&self, service: ServiceId, role: RoleId) -> Option<&RoleIndex> {
        self.index.get(service.0)?.get(role.0)?.as_ref()
    }

    /// Admission: whether any rule lets this subject use the service at all.
    pub fn admits(&self, service: ServiceId, subject: &Subject) -> bool {
        subject.roles.iter().any(|role| {
            self.role_index(service, *role).is_some() || self.mqtt_index(service, *role).is_some()
        })
    }

    fn mqtt_index(&self, service: ServiceId, role: RoleId) -> Option<&MqttRoleIndex> {
        self.mqtt.get(service.0)?.get(role.0)?.as_ref()
    }

    fn mqtt_rule(&self, r: RuleRef) -> Option<&MqttMatch> {
        self.rule(r)?.mqtt.as_ref()
    }

    /// What this subject's MQTT rules for the service allow at most: (highest `max_qos`,
    /// whether any allows retain). Advertised in the v5 CONNACK.
    pub fn mqtt_limits(&self, service: ServiceId, subject: &Subject) -> (u8, bool) {
        let mut limits = (0u8, false);
        for rule in &self.model.rules {
            let Some(m) = &rule.mqtt else { continue };
            if rule.services.contains(&service)
                && rule.roles.iter().any(|r| subject.roles.contains(r))
            {
                limits = (limits.0.max(m.max_qos), limits.1 || m.retain);
            }
        }
        limits
    }

    /// The highest QoS a subscription allowed by `rule` is granted.
    pub fn mqtt_max_qos(&self, rule: RuleRef) -> u8 {
        self.mqtt_rule(rule).map_or(0, |m| m.max_qos)
    }

    /// Decides one MQTT action of a session whose certificate identity is `identity` (for the
    /// rules' `{identity}` filters). Pure, like [`Policy::decide`].
    ///
    /// A publish is allowed by the first rule (in declaration order) whose filter matches the
    /// topic and whose QoS, retain and payload limits it meets; a subscription by the rule
    /// that covers the filter with the highest `max_qos`; a delivery by any rule whose
    /// subscribe filters match the topic.
    pub fn decide_mqtt(
        &self,
        service: ServiceId,
        subject: &Subject,
        identity: &str,
        action: MqttAction<'_>,
    ) -> Decision {
        let mut any_index = false;
        let mut allow: Option<RuleRef> = None;
        let mut closest: Option<(DenyReason, RuleRef)> = None;
        for role in &subject.roles {
            let Some(ri) = self.mqtt_index(service, *role) else {
                continue;
            };
            any_index = true;
            match action {
                MqttAction::Publish {
                    topic,
                    qos,
                    retain,
                    payload_len,
                } => ri.publish.matches(topic, identity, &mut |r| {
                    let Some(m) = self.mqtt_rule(r) else { return };
                    let verdict = if qos > m.max_qos {
                        Err(DenyReason::Qos {
                            qos,
                            max: m.max_qos,
                        })
                    } else if retain && !m.retain {
                        Err(DenyReason::Retain)
                    } else if let Some(max) = m.max_payload.filter(|max| payload_len > *max) {
                        Err(DenyReason::Payload {
                            size: payload_len,
                            max,
                        })
                    } else {
                        Ok(())
                    };
                    match verdict {
                        Ok(()) => {
                            if allow.is_none_or(|a| r.0 < a.0) {
                                allow = Some(r);
                            }
                        }
                        Err(reason) => {
                            if closest.is_none_or(|(_, c)| r.0 < c.0) {
                                closest = Some((reason, r));
                            }
                        }
                    }
                }),
                MqttAction::Subscribe { filter } => {
                    ri.subscribe.covers(filter, identity, &mut |r| {
                        let better = allow.is_none_or(|a| {
                            let (qa, qr) = (self.mqtt_max_qos(a), self.mqtt_max_qos(r));
                            qr > qa || (qr == qa && r.0 < a.0)
                        });
                        if better {
                            allow = Some(r);
                        }
                    })
                }
                MqttAction::Deliver { topic } => ri.subscribe.matches(topic, identity, &mut |r| {
                    if allow.is_none_or(|a| r.0 < a.0) {
                        allow = Some(r);
                    }
                }),
            }
        }
        match (allow, closest) {
            (Some(rule), _) => Decision::Allow { rule },
            (None, Some((reason, rule))) => Decision::Deny {
                rule: Some(rule),
                reason,
            },
            (None, None) => Decision::Deny {
                rule: None,
                reason: if any_index {
                    DenyReason::Topic
                } else {
                    DenyReason::NoRuleForService
                },
            },
        }
    }

    /// Decides one Modbus request. Pure: same inputs, same decision.
    pub fn decide(&self, service: ServiceId, subject: &Subject, request: &Request<'_>) -> Decision {
        let code = usize::from(request.function.0);
        for role in &subject.roles {
            let Some(slot) = self
                .role_index(service, *role)
                .and_then(|ri| ri.functions.get(code))
            else {
                continue;
            };
            let allowed = match request.access {
                Access::None => slot
                    .rules
                    .iter()
                    .copied()
                    .find(|r| self.check(*r, request).is_ok()),
                Access::Read(_, span)
                | Access::Write(_, span)
                | Access::ReadWrite { write: span, .. } => self.lookup(slot, span, request),
            };
            if let Some(rule) = allowed {
                return Decision::Allow { rule };
            }
        }
        self.deny(service, subject, request)
    }

    /// Rules with an address interval containing `span`: intervals starting at or before the
    /// span, latest start first, stopping as soon as no earlier interval reaches the span's end.
    fn covering<'s>(slot: &'s Slot, span: Span) -> impl Iterator<Item = RuleRef> + 's {
        let first = u32::from(span.address);
        let last = u32::from(span.last());
        let end = slot.intervals.partition_point(|i| i.first <= first);
        (0..end)
            .rev()
            .take_while(move |i| slot.max_last.get(*i).is_some_and(|m| *m >= last))
            .filter_map(|i| slot.intervals.get(i))
            .filter(move |i| i.last >= last)
            .map(|i| i.rule)
    }

    fn lookup(&self, slot: &Slot, span: Span, request: &Request<'_>) -> Option<RuleRef> {
        Self::covering(slot, span).find(|r| self.check(*r, request).is_ok())
    }

    /// The denial path: how far did the closest rule get? Rules whose addresses cover the
    /// request are checked in full (they may fail on unit, broadcast, value or coil); for the
    /// rest, the slot's unit summary says whether the address was the problem.
    fn deny(&self, service: ServiceId, subject: &Subject, request: &Request<'_>) -> Decision {
        let mut best: (DenyReason, Option<RuleRef>) = (DenyReason::NoRuleForService, None);
        let mut raise = |reason: DenyReason, rule: Option<RuleRef>| {
            if reason.stage() > best.0.stage() {
                best = (reason, rule);
            }
        };
        let unit = request.unit();
        for role in &subject.roles {
            let Some(ri) = self.role_index(service, *role) else {
                continue;
            };
            raise(DenyReason::Function, None);
            let Some(slot) = ri.functions.get(usize::from(request.function.0)) else {
                continue;
            };
            let Some(&any_rule) = slot.rules.first() else {
                continue;
            };
            let span = match request.access {
                Access::None => None,
                Access::Read(_, span)
                | Access::Write(_, span)
                | Access::ReadWrite { write: span, .. } => Some(span),
            };
            let mut check = |r: RuleRef| {
                if let Err(reason) = self.check(r, request) {
                    raise(reason, Some(r));
                }
            };
            let Some(span) = span else {
                slot.rules.iter().copied().for_each(check);
                continue;
            };
            Self::covering(slot, span).for_each(&mut check);
            // No covering rule decided it: the address is the problem if some rule of the
            // slot would take this unit (and this broadcast), else the unit is.
            if !slot.unit_possible(unit) {
                raise(DenyReason::Unit, Some(any_rule));
            } else if request.is_broadcast() && !slot.broadcast_any {
                raise(DenyReason::Broadcast, Some(any_rule));
            } else {
                let closest = slot.rules.iter().copied().find(|r| {
                    self.rule(*r)
                        .and_then(|rule| rule.modbus.as_ref())
                        .is_some_and(|m| {
                            m.units.contains(u32::from(unit))
                                && (m.broadcast || !request.is_broadcast())
                        })
                });
                raise(DenyReason::Address, closest.or(Some(any_rule)));
            }
        }
        Decision::Deny {
            rule: best.1,
            reason: best.0,
        }
    }

    /// Whether one rule (already known to allow the function) allows the request.
    fn check(&self, r: RuleRef, request: &Request<'_>) -> Result<(), DenyReason> {
        let Some(m) = self.rule(r).and_then(|rule| rule.modbus.as_ref()) else {
            return Err(DenyReason::Function);
        };
        if !m.units.contains(u32::from(request.unit())) {
            return Err(DenyReason::Unit);
        }
        if request.is_broadcast() && !m.broadcast {
            return Err(DenyReason::Broadcast);
        }
        let code = request.function.0;
        let within = |set: &crate::config::RangeSet, span: Span| {
            set.contains_range(u32::from(span.address), u32::from(span.last()))
        };
        let addresses_ok = match request.access {
            // File records address files, not the register tables: a rule that limits
            // addresses or bounds values cannot constrain them, so it does not allow them.
            Access::None if code == 20 => m.read_addresses.is_everything(),
            Access::None if code == 21 => m.write_addresses.is_everything() && m.values.is_none(),
            Access::None => true,
            Access::Read(_, span) => within(&m.read_addresses, span),
            Access::Write(_, span) => within(&m.write_addresses, span),
            Access::ReadWrite { read, write } => {
                within(&m.read_addresses, read) && within(&m.write_addresses, write)
            }
        };
        if !addresses_ok {
            return Err(DenyReason::Address);
        }
        check_written(m, &request.written)
    }
}

/// Value bounds and coil states of what a request writes.
fn check_written(m: &ModbusMatch, written: &Written<'_>) -> Result<(), DenyReason> {
    match (written, m.values) {
        (Written::Registers { .. }, Some(b)) => {
            for (address, value) in written.registers() {
                if value < b.min || value > b.max {
                    return Err(DenyReason::Value {
                        address,
                        value,
                        min: b.min,
                        max: b.max,
                    });
                }
            }
            Ok(())
        }
        (
            Written::Mask {
                address,
                and_mask,
                or_mask,
            },
            Some(b),
        ) => {
            // Result = (current AND and) OR (or AND NOT and): the forced bits are fixed, the
            // kept bits are whatever the register holds. Allow only if every outcome is in bounds.
            let lowest = or_mask & !and_mask;
            let highest = lowest | and_mask;
            if lowest < b.min || highest > b.max {
                return Err(DenyReason::MaskValue {
                    address: *address,
                    lowest,
                    highest,
                    min: b.min,
                    max: b.max,
                });
            }
            Ok(())
        }
        (Written::Coil { .. } | Written::Coils { .. }, _) => {
            for (address, on) in written.coils() {
                if (on && !m.coil_values.on) || (!on && !m.coil_values.off) {
                    return Err(DenyReason::Coil { address, on });
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
