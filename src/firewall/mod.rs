//! The host firewall for the IT/OT boundary: a ruleset derived from the configuration, as
//! data ([`Plan`]), rendered as nft text (for people) and as the nftables JSON batch that
//! replaces ztgate's own table atomically (for `nft -j -f -`, through the `nftables` crate).
//!
//! Everything lives in `table inet ztgate`; no other table is ever flushed or changed, so
//! Docker's or an administrator's rules survive. The table:
//!
//! - `input` (policy drop): loopback, the quarantine set dropped first, established/related,
//!   IPv6 neighbour discovery, each listener from the zones allowed to use it,
//!   `[[firewall.allow]]` services from the management zones; the rest counted, logged at a
//!   limited rate, and dropped by the policy.
//! - `forward` (policy drop): nothing crosses between zones; counted and logged.
//! - `output` (policy accept): into a protected (OT) zone only established traffic and new
//!   connections to the declared upstream address/port pairs; the rest counted, logged, dropped.
//!
//! Building the plan is pure (no root needed: `ztgate firewall show`); [`nft`] applies it.

pub mod nft;
pub mod quarantine;
mod render;

pub use render::{to_json, to_text};

use crate::config::{Config, L4, Zone};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// ztgate's table (family inet: IPv4 and IPv6 in one).
pub const TABLE: &str = "ztgate";
pub const QUARANTINE_V4: &str = "quarantine_v4";
pub const QUARANTINE_V6: &str = "quarantine_v6";
pub const UPSTREAMS_V4: &str = "upstreams_v4";
pub const UPSTREAMS_V6: &str = "upstreams_v6";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// nft's payload protocol name.
    pub fn proto(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

/// One condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cond {
    IifName(Vec<String>),
    OifName(Vec<String>),
    Saddr(Family, Vec<IpNet>),
    Daddr(Family, Vec<IpNet>),
    /// `ip saddr @set`
    SaddrInSet(Family, &'static str),
    /// `ip daddr . tcp dport @set`
    DaddrDportInSet(Family, &'static str),
    Dport(L4, u16),
    CtState(Vec<&'static str>),
    Icmpv6Type(Vec<&'static str>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    /// No verdict: the rule only counts and logs (the chain's policy or a later rule decides).
    Continue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Input,
    Forward,
    Output,
}

impl Hook {
    pub fn chain(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Forward => "forward",
            Hook::Output => "output",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub hook: Hook,
    pub conds: Vec<Cond>,
    pub counter: bool,
    /// Log prefix; logged at the plan's rate limit.
    pub log: Option<String>,
    pub verdict: Verdict,
    /// Names the rule in `ztgate firewall status` and in the read-back check.
    pub comment: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub hook: Hook,
    pub policy_drop: bool,
}

/// The whole table, as data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
    /// `(address, port)` of every upstream.
    pub upstreams: Vec<SocketAddr>,
    /// Log lines per second.
    pub log_rate: u32,
}

/// The conditions that select traffic from (`source`) or to a zone: one list per address
/// family the zone has networks in (with that family), or one list without addresses (and no
/// family) when it has none.
fn zone_selectors(zone: &Zone, source: bool) -> Vec<(Option<Family>, Vec<Cond>)> {
    let ifaces = |c: &mut Vec<Cond>| {
        if !zone.interfaces.is_empty() {
            c.push(if source {
                Cond::IifName(zone.interfaces.clone())
            } else {
                Cond::OifName(zone.interfaces.clone())
            });
        }
    };
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let nets: Vec<IpNet> = zone
            .networks
            .iter()
            .filter(|n| Family::of(&n.addr()) == family)
            .copied()
            .collect();
        if nets.is_empty() {
            continue;
        }
        let mut c = Vec::new();
        ifaces(&mut c);
        c.push(if source {
            Cond::Saddr(family, nets)
        } else {
            Cond::Daddr(family, nets)
        });
        out.push((Some(family), c));
    }
    if out.is_empty() {
        let mut c = Vec::new();
        ifaces(&mut c);
        out.push((None, c));
    }
    out
}

impl Plan {
    /// The ruleset for a configuration. `None` when the configuration has no `[firewall]`.
    pub fn from_config(config: &Config) -> Option<Plan> {
        let fw = config.firewall.as_ref()?;
        let mut rules = Vec::new();
        let rule = |hook, conds, verdict, comment: String| Rule {
            hook,
            conds,
            counter: false,
            log: None,
            verdict,
            comment,
        };
        let counted = |hook, conds, verdict, comment: String| Rule {
            counter: true,
            ..rule(hook, conds, verdict, comment)
        };

        // input
        rules.push(rule(
            Hook::Input,
            vec![Cond::IifName(vec!["lo".into()])],
            Verdict::Accept,
            "loopback".into(),
        ));
        rules.push(rule(
            Hook::Input,
            vec![Cond::CtState(vec!["established", "related"])],
            Verdict::Accept,
            "established".into(),
        ));
        // New connections from quarantined sources; open sessions (and the replies to the
        // gateway's own connections) are not cut.
        for (family, set) in [(Family::V4, QUARANTINE_V4), (Family::V6, QUARANTINE_V6)] {
            rules.push(counted(
                Hook::Input,
                vec![Cond::SaddrInSet(family, set)],
                Verdict::Drop,
                format!("quarantine {}", family.proto()),
            ));
        }
        rules.push(rule(
            Hook::Input,
            vec![Cond::CtState(vec!["invalid"])],
            Verdict::Drop,
            "invalid".into(),
        ));
        // Without neighbour discovery IPv6 stops working on the link.
        rules.push(rule(
            Hook::Input,
            vec![Cond::Icmpv6Type(vec![
                "nd-neighbor-solicit",
                "nd-neighbor-advert",
            ])],
            Verdict::Accept,
            "ipv6 neighbour discovery".into(),
        ));
        for l in &config.listeners {
            for zi in &l.zones {
                let Some(zone) = config.zones.get(*zi) else {
                    continue;
                };
                for (family, mut conds) in zone_selectors(zone, true) {
                    let ip = l.bind.ip();
                    // 0.0.0.0 listens on IPv4 only ([::] is dual-stack).
                    if ip == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                        && family == Some(Family::V6)
                    {
                        continue;
                    }
                    if !ip.is_unspecified() {
                        // A listener bound to one address is reachable only there (and only
                        // in that address's family).
                        if family.is_some_and(|f| f != Family::of(&ip)) {
                            continue;
                        }
                        conds.push(Cond::Daddr(Family::of(&ip), vec![IpNet::from(ip)]));
                    }
                    conds.push(Cond::Dport(L4::Tcp, l.bind.port()));
                    rules.push(counted(
                        Hook::Input,
                        conds,
                        Verdict::Accept,
                        format!("listener {} from {}", l.name, zone.name),
                    ));
                }
            }
        }
        for a in &fw.allow {
            for zi in &a.zones {
                let Some(zone) = config.zones.get(*zi) else {
                    continue;
                };
                for (_, mut conds) in zone_selectors(zone, true) {
                    conds.push(Cond::Dport(a.protocol, a.port));
                    rules.push(counted(
                        Hook::Input,
                        conds,
                        Verdict::Accept,
                        format!("allow {} from {}", a.name, zone.name),
                    ));
                }
            }
        }
        let drop_log = |hook: Hook, conds: Vec<Cond>, what: String| {
            let mut r = counted(hook, conds, Verdict::Continue, format!("{what} drop"));
            r.log = Some(format!("{}{what}: ", fw.log_prefix));
            r
        };
        rules.push(drop_log(Hook::Input, Vec::new(), "input".into()));
        rules.push(drop_log(Hook::Forward, Vec::new(), "forward".into()));

        // output: into protected zones only established traffic, neighbour discovery and the
        // upstream address/port pairs. "Into the zone" is by interface *or* by address, each
        // on its own: an OT device must not be reachable over IPv6 (link-local included), by
        // an off-zone address routed out of the OT leg, or by its address via another leg.
        if config.zones.iter().any(|z| z.protected) {
            rules.push(rule(
                Hook::Output,
                vec![Cond::CtState(vec!["established", "related"])],
                Verdict::Accept,
                "established out".into(),
            ));
            // ND is not tracked by conntrack; without it the gateway cannot answer OT hosts.
            rules.push(rule(
                Hook::Output,
                vec![Cond::Icmpv6Type(vec![
                    "nd-neighbor-solicit",
                    "nd-neighbor-advert",
                    "nd-router-solicit",
                ])],
                Verdict::Accept,
                "ipv6 neighbour discovery out".into(),
            ));
            for (family, set) in [(Family::V4, UPSTREAMS_V4), (Family::V6, UPSTREAMS_V6)] {
                rules.push(counted(
                    Hook::Output,
                    vec![Cond::DaddrDportInSet(family, set)],
                    Verdict::Accept,
                    format!("upstreams {}", family.proto()),
                ));
            }
        }
        for zone in config.zones.iter().filter(|z| z.protected) {
            let mut selectors: Vec<(String, Cond)> = Vec::new();
            if !zone.interfaces.is_empty() {
                selectors.push((
                    format!("output to {} via interface", zone.name),
                    Cond::OifName(zone.interfaces.clone()),
                ));
            }
            for family in [Family::V4, Family::V6] {
                let nets: Vec<IpNet> = zone
                    .networks
                    .iter()
                    .filter(|n| Family::of(&n.addr()) == family)
                    .copied()
                    .collect();
                if !nets.is_empty() {
                    selectors.push((
                        format!("output to {} {}", zone.name, family.proto()),
                        Cond::Daddr(family, nets),
                    ));
                }
            }
            for (what, cond) in selectors {
                rules.push(drop_log(Hook::Output, vec![cond.clone()], what.clone()));
                rules.push(rule(
                    Hook::Output,
                    vec![cond],
                    Verdict::Drop,
                    format!("{what} deny"),
                ));
            }
        }

        let mut upstreams: Vec<SocketAddr> = config
            .services
            .iter()
            .filter_map(|s| s.upstream.parse().ok())
            .collect();
        upstreams.sort();
        upstreams.dedup();
        Some(Plan {
            chains: vec![
                Chain {
                    hook: Hook::Input,
                    policy_drop: true,
                },
                Chain {
                    hook: Hook::Forward,
                    policy_drop: true,
                },
                Chain {
                    hook: Hook::Output,
                    policy_drop: false,
                },
            ],
            rules,
            upstreams,
            log_rate: fw.log_rate,
        })
    }

    /// The upstreams of one address family.
    pub fn upstreams_in(&self, family: Family) -> impl Iterator<Item = &SocketAddr> {
        self.upstreams
            .iter()
            .filter(move |a| Family::of(&a.ip()) == family)
    }

    pub fn rules_in(&self, hook: Hook) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(move |r| r.hook == hook)
    }
}

#[cfg(test)]
mod tests;
