//! A [`Plan`] as nft text and as the nftables JSON batch that replaces the table atomically.

use super::{
    Cond, Family, Hook, Plan, QUARANTINE_V4, QUARANTINE_V6, Rule, TABLE, UPSTREAMS_V4,
    UPSTREAMS_V6, Verdict,
};
use crate::config::L4;
use ipnet::IpNet;
use nftables::batch::Batch;
use nftables::expr::{
    CT, Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem,
};
use nftables::schema::{self, NfListObject, Nftables, SetFlag, SetType, SetTypeValue};
use nftables::stmt::{AnonymousCounter, Counter, Limit, Log, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write;
use std::net::IpAddr;

fn l4(p: L4) -> &'static str {
    match p {
        L4::Tcp => "tcp",
        L4::Udp => "udp",
    }
}

fn list<T: std::fmt::Display>(items: &[T], quote: bool) -> String {
    let item = |i: &T| {
        if quote {
            format!("\"{i}\"")
        } else {
            i.to_string()
        }
    };
    match items {
        [one] => item(one),
        many => format!(
            "{{ {} }}",
            many.iter().map(item).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Host routes print as plain addresses, as nft does.
fn net_text(n: &IpNet) -> String {
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn cond_text(c: &Cond) -> String {
    match c {
        Cond::IifName(i) => format!("iifname {}", list(i, true)),
        Cond::OifName(i) => format!("oifname {}", list(i, true)),
        Cond::Saddr(f, n) => format!(
            "{} saddr {}",
            f.proto(),
            list(&n.iter().map(net_text).collect::<Vec<_>>(), false)
        ),
        Cond::Daddr(f, n) => format!(
            "{} daddr {}",
            f.proto(),
            list(&n.iter().map(net_text).collect::<Vec<_>>(), false)
        ),
        Cond::SaddrInSet(f, set) => format!("{} saddr @{set}", f.proto()),
        Cond::DaddrDportInSet(f, set) => format!("{} daddr . tcp dport @{set}", f.proto()),
        Cond::Dport(p, port) => format!("{} dport {port}", l4(*p)),
        Cond::CtState(s) => format!("ct state {}", list(s, false)),
        Cond::Icmpv6Type(t) => format!("icmpv6 type {}", list(t, false)),
    }
}

fn rule_text(r: &Rule, log_rate: u32) -> String {
    let mut parts: Vec<String> = r.conds.iter().map(cond_text).collect();
    if r.counter {
        parts.push("counter".into());
    }
    if let Some(prefix) = &r.log {
        parts.push(format!(
            "limit rate {log_rate}/second log prefix \"{prefix}\""
        ));
    }
    match r.verdict {
        Verdict::Accept => parts.push("accept".into()),
        Verdict::Drop => parts.push("drop".into()),
        Verdict::Continue => {}
    }
    parts.push(format!("comment \"{}\"", r.comment));
    parts.join(" ")
}

/// The table in nft syntax (what `nft list table inet ztgate` would show, less handles and
/// counter values).
pub fn to_text(plan: &Plan) -> String {
    let mut out = format!("table inet {TABLE} {{\n");
    let elements = |family: Family| -> Vec<String> {
        plan.upstreams
            .iter()
            .filter(|a| {
                matches!(
                    (family, a.ip()),
                    (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
                )
            })
            .map(|a| format!("{} . {}", a.ip(), a.port()))
            .collect()
    };
    for (name, family) in [(UPSTREAMS_V4, Family::V4), (UPSTREAMS_V6, Family::V6)] {
        let addr = if family == Family::V4 {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        };
        let _ = writeln!(out, "\tset {name} {{\n\t\ttype {addr} . inet_service");
        let e = elements(family);
        if !e.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", e.join(", "));
        }
        out.push_str("\t}\n\n");
    }
    for (name, addr) in [(QUARANTINE_V4, "ipv4_addr"), (QUARANTINE_V6, "ipv6_addr")] {
        let _ = writeln!(
            out,
            "\tset {name} {{\n\t\ttype {addr}\n\t\tsize {QUARANTINE_SIZE}\n\t\tflags timeout\n\t}}\n"
        );
    }
    for (i, chain) in plan.chains.iter().enumerate() {
        let name = chain.hook.chain();
        let policy = if chain.policy_drop { "drop" } else { "accept" };
        let _ = writeln!(
            out,
            "\tchain {name} {{\n\t\ttype filter hook {name} priority filter; policy {policy};"
        );
        for r in plan.rules_in(chain.hook) {
            let _ = writeln!(out, "\t\t{}", rule_text(r, plan.log_rate));
        }
        out.push_str("\t}\n");
        if i + 1 < plan.chains.len() {
            out.push('\n');
        }
    }
    out.push_str("}\n");
    out
}

fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

fn payload(protocol: &str, field: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Owned(protocol.to_string()),
            field: Cow::Owned(field.to_string()),
        },
    )))
}

fn net_expr(n: &IpNet) -> Expression<'static> {
    if n.prefix_len() == n.max_prefix_len() {
        s(n.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(s(n.addr().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

/// One value, or an anonymous set of several.
fn one_or_set(mut items: Vec<Expression<'static>>) -> Expression<'static> {
    if items.len() == 1 {
        items.remove(0)
    } else {
        Expression::Named(NamedExpression::Set(
            items.into_iter().map(SetItem::Element).collect(),
        ))
    }
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn cond_json(c: &Cond) -> Statement<'static> {
    match c {
        Cond::IifName(i) => eq(
            meta(MetaKey::Iifname),
            one_or_set(i.iter().map(|x| s(x.clone())).collect()),
        ),
        Cond::OifName(i) => eq(
            meta(MetaKey::Oifname),
            one_or_set(i.iter().map(|x| s(x.clone())).collect()),
        ),
        Cond::Saddr(f, n) => eq(
            payload(f.proto(), "saddr"),
            one_or_set(n.iter().map(net_expr).collect()),
        ),
        Cond::Daddr(f, n) => eq(
            payload(f.proto(), "daddr"),
            one_or_set(n.iter().map(net_expr).collect()),
        ),
        Cond::SaddrInSet(f, set) => eq(payload(f.proto(), "saddr"), s(format!("@{set}"))),
        Cond::DaddrDportInSet(f, set) => eq(
            Expression::Named(NamedExpression::Concat(vec![
                payload(f.proto(), "daddr"),
                payload("tcp", "dport"),
            ])),
            s(format!("@{set}")),
        ),
        Cond::Dport(p, port) => eq(
            payload(l4(*p), "dport"),
            Expression::Number(u32::from(*port)),
        ),
        Cond::CtState(states) => Statement::Match(Match {
            left: Expression::Named(NamedExpression::CT(CT {
                key: Cow::Borrowed("state"),
                family: None,
                dir: None,
            })),
            right: Expression::List(states.iter().map(|x| s(*x)).collect()),
            op: Operator::IN,
        }),
        Cond::Icmpv6Type(t) => eq(
            payload("icmpv6", "type"),
            one_or_set(t.iter().map(|x| s(*x)).collect()),
        ),
    }
}

fn rule_json(r: &Rule, log_rate: u32) -> schema::Rule<'static> {
    let mut expr: Vec<Statement<'static>> = r.conds.iter().map(cond_json).collect();
    if r.counter {
        expr.push(Statement::Counter(Counter::Anonymous(Some(
            AnonymousCounter::default(),
        ))));
    }
    if let Some(prefix) = &r.log {
        expr.push(Statement::Limit(Limit {
            rate: log_rate,
            rate_unit: None,
            per: Some(Cow::Borrowed("second")),
            burst: None,
            burst_unit: None,
            inv: None,
        }));
        expr.push(Statement::Log(Some(Log {
            prefix: Some(Cow::Owned(prefix.clone())),
            group: None,
            snaplen: None,
            queue_threshold: None,
            level: None,
            flags: None,
        })));
    }
    match r.verdict {
        Verdict::Accept => expr.push(Statement::Accept(None)),
        Verdict::Drop => expr.push(Statement::Drop(None)),
        Verdict::Continue => {}
    }
    schema::Rule {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        chain: Cow::Borrowed(r.hook.chain()),
        expr: Cow::Owned(expr),
        handle: None,
        index: None,
        comment: Some(Cow::Owned(r.comment.clone())),
    }
}

fn table() -> schema::Table<'static> {
    schema::Table {
        family: NfFamily::INet,
        name: Cow::Borrowed(TABLE),
        handle: None,
    }
}

/// Most addresses the quarantine holds at once (per family): bounded kernel memory.
pub const QUARANTINE_SIZE: u32 = 65_536;

fn set(
    name: &'static str,
    set_type: SetTypeValue<'static>,
    flags: Option<HashSet<SetFlag>>,
    elem: Vec<Expression<'static>>,
) -> schema::Set<'static> {
    let size = flags.is_some().then_some(QUARANTINE_SIZE);
    schema::Set {
        family: NfFamily::INet,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        handle: None,
        set_type,
        policy: None,
        flags,
        elem: (!elem.is_empty()).then_some(Cow::Owned(elem)),
        timeout: None,
        gc_interval: None,
        size,
        comment: None,
    }
}

/// A quarantined address and the seconds it has left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    pub addr: IpAddr,
    pub seconds_left: u32,
}

/// The set element for a quarantined address with its timeout.
pub fn quarantine_elem(addr: IpAddr, seconds: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(s(addr.to_string())),
        timeout: Some(seconds.max(1)),
        expires: None,
        comment: None,
        counter: None,
    }))
}

/// The set an address is quarantined in.
pub fn quarantine_set(addr: &IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => QUARANTINE_V4,
        IpAddr::V6(_) => QUARANTINE_V6,
    }
}

/// The batch that replaces `table inet ztgate` in one transaction: `add table` (so that the
/// delete cannot fail), `delete table`, then the whole table again. `keep` re-adds quarantined
/// addresses with the time they had left, so a re-apply does not release them.
pub fn to_json(plan: &Plan, keep: &[Quarantined]) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(table()));
    batch.delete(NfListObject::Table(table()));
    batch.add(NfListObject::Table(table()));
    for (name, family) in [(UPSTREAMS_V4, Family::V4), (UPSTREAMS_V6, Family::V6)] {
        let addr = if family == Family::V4 {
            SetType::Ipv4Addr
        } else {
            SetType::Ipv6Addr
        };
        let elem = plan
            .upstreams
            .iter()
            .filter(|a| {
                matches!(
                    (family, a.ip()),
                    (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
                )
            })
            .map(|a| {
                Expression::Named(NamedExpression::Concat(vec![
                    s(a.ip().to_string()),
                    Expression::Number(u32::from(a.port())),
                ]))
            })
            .collect();
        batch.add(NfListObject::Set(Box::new(set(
            name,
            SetTypeValue::Concatenated(Cow::Owned(vec![addr, SetType::InetService])),
            None,
            elem,
        ))));
    }
    for (name, addr) in [
        (QUARANTINE_V4, SetType::Ipv4Addr),
        (QUARANTINE_V6, SetType::Ipv6Addr),
    ] {
        let elem = keep
            .iter()
            .filter(|q| quarantine_set(&q.addr) == name)
            .map(|q| quarantine_elem(q.addr, q.seconds_left))
            .collect();
        batch.add(NfListObject::Set(Box::new(set(
            name,
            SetTypeValue::Single(addr),
            Some(HashSet::from([SetFlag::Timeout])),
            elem,
        ))));
    }
    for chain in &plan.chains {
        batch.add(NfListObject::Chain(schema::Chain {
            family: NfFamily::INet,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(chain.hook.chain()),
            newname: None,
            handle: None,
            _type: Some(NfChainType::Filter),
            hook: Some(match chain.hook {
                Hook::Input => NfHook::Input,
                Hook::Forward => NfHook::Forward,
                Hook::Output => NfHook::Output,
            }),
            prio: Some(0),
            dev: None,
            policy: Some(if chain.policy_drop {
                NfChainPolicy::Drop
            } else {
                NfChainPolicy::Accept
            }),
        }));
    }
    for r in &plan.rules {
        batch.add(NfListObject::Rule(rule_json(r, plan.log_rate)));
    }
    batch.to_nftables()
}
