//! Reading `ztgate.toml` and the policy directory into a validated model.
//!
//! Two stages, as in the style guide: [`raw`] holds the serde types (unknown fields rejected,
//! every referenced name spanned), then [`Config::compile`] turns them into validated types and
//! collects **every** error with `file:line:column`. `ztgate check` and `ztgate run` go through
//! exactly the same code.

mod model;
pub mod raw;
mod source;
mod topic;

pub use model::*;
pub use source::{ConfigError, ConfigErrors, MAX_FILE_SIZE, SourceFile};
pub use topic::{IDENTITY, check_filter};

use crate::protocol::modbus::{Function, preset};
use raw::{FunctionSpec, RangeSpec, RawConfig, RawModbusRule, RawPolicyFile, RawRule};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Most policy files a directory may hold; a guard against pointing `dir` at `/`.
pub const MAX_POLICY_FILES: usize = 4096;

impl Config {
    /// Loads `ztgate.toml` and the policy directory it names, validating everything.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let main = SourceFile::read(path).map_err(|e| ConfigErrors(vec![e]))?;
        let raw: RawConfig = main.parse().map_err(|e| ConfigErrors(vec![e]))?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let dir = match &raw.policy.dir {
            Some(dir) => base.join(dir.get_ref()),
            None => base.join("policies"),
        };
        let policies = read_policy_dir(&dir, &main, raw.policy.dir.as_ref())?;
        Config::compile(&main, raw, &policies, &base)
    }

    /// Parses and validates from text already in memory (the demo's embedded example, tests).
    /// Relative paths are resolved against `base`.
    pub fn from_sources(
        main: &SourceFile,
        policies: &[SourceFile],
        base: &Path,
    ) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = main.parse().map_err(|e| ConfigErrors(vec![e]))?;
        Config::compile(main, raw, policies, base)
    }

    /// The validation stage: raw types in, a model whose every reference resolves out.
    pub fn compile(
        main: &SourceFile,
        raw: RawConfig,
        policy_files: &[SourceFile],
        base: &Path,
    ) -> Result<Config, ConfigErrors> {
        let mut c = Compiler {
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let path = |s: &Spanned<String>| base.join(s.get_ref());

        let tls = TlsSettings {
            client_ca: path(&raw.tls.client_ca),
            cert: path(&raw.tls.cert),
            key: path(&raw.tls.key),
            crls: raw.tls.crls.iter().map(path).collect(),
            handshake_timeout: c.duration(
                main,
                raw.tls.handshake_timeout.as_ref(),
                Duration::from_secs(10),
            ),
            certificate_roles: raw.tls.certificate_roles,
        };

        // Services first: listeners and rules refer to them.
        let mut services: Vec<Service> = Vec::new();
        let mut service_ids: HashMap<String, ServiceId> = HashMap::new();
        for s in &raw.services {
            let name = s.name.get_ref().clone();
            if service_ids.contains_key(&name) {
                c.err(main, s.name.span(), format!("duplicate service \"{name}\""));
                continue;
            }
            let service = c.service(main, s, base);
            service_ids.insert(name, ServiceId(services.len()));
            services.push(service);
        }
        let mut names: HashMap<&str, &str> = HashMap::new();
        for (s, raw_s) in services.iter().zip(raw.services.iter()) {
            for (n, raw_n) in s.server_names.iter().zip(server_name_spans(raw_s)) {
                if let Some(other) = names.insert(n, &s.name) {
                    c.err(
                        main,
                        raw_n,
                        format!("server name \"{n}\" already selects service \"{other}\""),
                    );
                }
            }
        }

        let zones = c.zones(main, &raw.zones);
        let zone_ref = |c: &mut Compiler, z: &Spanned<String>| {
            let i = zones.iter().position(|x| x.name == *z.get_ref());
            if i.is_none() {
                c.err(
                    main,
                    z.span(),
                    format!("zone \"{}\" is not defined", z.get_ref()),
                );
            }
            i
        };
        let mut listeners = Vec::new();
        for l in &raw.listeners {
            c.check_name(main, "listener", &l.name);
            if listeners
                .iter()
                .any(|x: &Listener| x.name == *l.name.get_ref())
            {
                c.err(
                    main,
                    l.name.span(),
                    format!("duplicate listener \"{}\"", l.name.get_ref()),
                );
            }
            let bind = l.bind.get_ref().parse::<SocketAddr>().unwrap_or_else(|_| {
                c.err(
                    main,
                    l.bind.span(),
                    format!(
                        "bind address \"{}\" is not an IP:port (e.g. \"0.0.0.0:802\" or \"[::]:802\")",
                        l.bind.get_ref()
                    ),
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            });
            let tls_versions = match &l.tls_versions {
                None => TlsVersions {
                    tls12: true,
                    tls13: true,
                },
                Some(v) => {
                    let mut versions = TlsVersions {
                        tls12: false,
                        tls13: false,
                    };
                    for s in v.get_ref() {
                        match s.as_str() {
                            "1.2" => versions.tls12 = true,
                            "1.3" => versions.tls13 = true,
                            other => c.err(
                                main,
                                v.span(),
                                format!("TLS version \"{other}\" is not supported (use \"1.2\" and/or \"1.3\")"),
                            ),
                        }
                    }
                    if v.get_ref().is_empty() {
                        c.err(main, v.span(), "tls_versions enables no TLS version");
                    }
                    versions
                }
            };
            let default_service = l.default_service.as_ref().and_then(|s| {
                let id = service_ids.get(s.get_ref()).copied();
                if id.is_none() {
                    c.err(
                        main,
                        s.span(),
                        format!(
                            "default_service \"{}\" is not a defined service",
                            s.get_ref()
                        ),
                    );
                }
                id
            });
            let listener_zones = match &l.zones {
                Some(list) => list.iter().filter_map(|z| zone_ref(&mut c, z)).collect(),
                None => {
                    if !zones.is_empty() {
                        c.err(
                            main,
                            l.name.span(),
                            format!(
                                "listener \"{}\" names no zones: with [[zone]]s defined, say which zones may connect (zones = [\"it\"])",
                                l.name.get_ref()
                            ),
                        );
                    }
                    Vec::new()
                }
            };
            listeners.push(Listener {
                name: l.name.get_ref().clone(),
                bind,
                tls_versions,
                default_service,
                zones: listener_zones,
            });
        }
        if raw.listeners.is_empty() {
            c.errors.push(main.error(
                0..0,
                "no [[listener]] defined: the gateway would accept nothing",
            ));
        }

        let limits = Limits {
            max_sessions: c.count(
                main,
                "max_sessions",
                raw.limits.max_sessions.as_ref(),
                1024,
                1..=1_000_000,
            ),
            max_handshakes: c.count(
                main,
                "max_handshakes",
                raw.limits.max_handshakes.as_ref(),
                128,
                1..=100_000,
            ),
            max_sessions_per_identity: c.count(
                main,
                "max_sessions_per_identity",
                raw.limits.max_sessions_per_identity.as_ref(),
                16,
                1..=1_000_000,
            ),
            idle_timeout: c.duration(
                main,
                raw.limits.idle_timeout.as_ref(),
                Duration::from_secs(600),
            ),
            frame_timeout: c.duration(
                main,
                raw.limits.frame_timeout.as_ref(),
                Duration::from_secs(5),
            ),
        };

        // Upstreams must lie in a zone, so the firewall can let the gateway (and only the
        // gateway) reach them.
        if !zones.is_empty() {
            for (s, raw_s) in services.iter().zip(&raw.services) {
                match s.upstream.parse::<SocketAddr>() {
                    Ok(a) if zones.iter().any(|z| z.contains(a.ip())) => {}
                    Ok(a) => c.err(
                        main,
                        raw_s.upstream.span(),
                        format!(
                            "upstream {} of service \"{}\" lies in no zone's networks",
                            a.ip(),
                            s.name
                        ),
                    ),
                    Err(_) => c.err(
                        main,
                        raw_s.upstream.span(),
                        format!(
                            "upstream \"{}\" must be an IP address and port when [[zone]]s are defined (the firewall allows addresses, not names)",
                            s.upstream
                        ),
                    ),
                }
            }
        }
        let firewall = raw
            .firewall
            .as_ref()
            .map(|f| c.firewall(main, f, &zones, &zone_ref));

        let audit = AuditSettings {
            file: raw.audit.file.as_ref().map(path),
            stdout: raw.audit.stdout,
            queue: c.count(
                main,
                "queue",
                raw.audit.queue.as_ref(),
                65_536,
                16..=16_777_216,
            ),
        };

        if audit.file.is_none() && !audit.stdout {
            c.warnings.push(format!(
                "{}: [audit] has neither a file nor stdout = true: audit events are discarded",
                main.path.display()
            ));
        }
        let policy = c.policy(policy_files, &services, &service_ids, &tls);

        if c.errors.is_empty() {
            return Ok(Config {
                source: main.path.clone(),
                gateway_name: raw.gateway.name.unwrap_or_else(|| "ztgate".to_string()),
                tls,
                listeners,
                services,
                limits,
                audit,
                policy,
                zones,
                firewall,
                warnings: c.warnings,
            });
        }
        // In file order, then by position: the order an engineer fixes them in.
        let mut files: Vec<PathBuf> = Vec::new();
        for e in &c.errors {
            if !files.contains(&e.file) {
                files.push(e.file.clone());
            }
        }
        c.errors.sort_by_key(|e| {
            let file = files
                .iter()
                .position(|f| *f == e.file)
                .unwrap_or(usize::MAX);
            (file, e.line, e.column)
        });
        Err(ConfigErrors(c.errors))
    }
}

fn server_name_spans(s: &raw::RawService) -> Vec<Range<usize>> {
    match &s.server_names {
        Some(names) => names.iter().map(|n| n.span()).collect(),
        None => vec![s.name.span()],
    }
}

fn read_policy_dir(
    dir: &Path,
    main: &SourceFile,
    span: Option<&Spanned<String>>,
) -> Result<Vec<SourceFile>, ConfigErrors> {
    let at = span.map_or(0..0, |s| s.span());
    let entries = std::fs::read_dir(dir).map_err(|e| {
        ConfigErrors(vec![main.error(
            at.clone(),
            format!("cannot read policy directory {}: {e}", dir.display()),
        )])
    })?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            ConfigErrors(vec![main.error(
                at.clone(),
                format!("cannot list policy directory {}: {e}", dir.display()),
            )])
        })?;
        let p = entry.path();
        if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
            paths.push(p);
        }
        if paths.len() > MAX_POLICY_FILES {
            return Err(ConfigErrors(vec![main.error(
                at,
                format!(
                    "more than {MAX_POLICY_FILES} policy files in {}",
                    dir.display()
                ),
            )]));
        }
    }
    paths.sort();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        match SourceFile::read(&p) {
            Ok(f) => files.push(f),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Parses `"500ms"`, `"5s"`, `"10m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("duration \"{text}\" must be a number with a unit: 500ms, 5s, 10m, 1h")
    })?;
    let d = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "duration \"{text}\" needs a unit: ms, s, m or h (e.g. \"5s\")"
            ));
        }
    };
    if d.is_zero() {
        return Err(format!("duration \"{text}\" must be greater than zero"));
    }
    if d > Duration::from_secs(7 * 24 * 3600) {
        return Err(format!("duration \"{text}\" is longer than a week"));
    }
    Ok(d)
}

/// Parses `5` or `"100-119"` into an inclusive range within `0..=max`.
pub fn parse_range(spec: &RangeSpec, what: &str, max: u32) -> Result<(u32, u32), String> {
    let bound = |n: i64| -> Result<u32, String> {
        u32::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("{what} {n} outside 0..={max}"))
    };
    match spec {
        RangeSpec::One(n) => {
            let n = bound(*n)?;
            Ok((n, n))
        }
        RangeSpec::Text(t) => {
            let parse = |s: &str| -> Result<u32, String> {
                let n: i64 = s.trim().parse().map_err(|_| {
                    format!(
                        "{what} range \"{t}\" must be a number or \"first-last\" (e.g. \"100-119\")"
                    )
                })?;
                bound(n)
            };
            let (a, b) = match t.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => {
                    let n = parse(t)?;
                    (n, n)
                }
            };
            if a > b {
                return Err(format!("{what} range \"{t}\" is reversed ({a} > {b})"));
            }
            Ok((a, b))
        }
    }
}

struct Compiler {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Compiler {
    fn err(&mut self, file: &SourceFile, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(file.error(span, message));
    }

    fn duration(
        &mut self,
        file: &SourceFile,
        value: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(v) => match parse_duration(v.get_ref()) {
                Ok(d) => d,
                Err(e) => {
                    self.err(file, v.span(), e);
                    default
                }
            },
        }
    }

    fn count(
        &mut self,
        file: &SourceFile,
        what: &str,
        value: Option<&Spanned<i64>>,
        default: usize,
        range: std::ops::RangeInclusive<i64>,
    ) -> usize {
        match value {
            None => default,
            Some(v) if range.contains(v.get_ref()) => {
                usize::try_from(*v.get_ref()).unwrap_or(default)
            }
            Some(v) => {
                self.err(
                    file,
                    v.span(),
                    format!(
                        "{what} {} outside {}..={}",
                        v.get_ref(),
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    fn ranges(
        &mut self,
        file: &SourceFile,
        specs: &[Spanned<RangeSpec>],
        what: &str,
        max: u32,
    ) -> RangeSet {
        let mut out = Vec::new();
        for s in specs {
            match parse_range(s.get_ref(), what, max) {
                Ok(r) => out.push(r),
                Err(e) => self.err(file, s.span(), e),
            }
        }
        RangeSet::new(out)
    }

    /// Names that end up in nft comments and log prefixes: a plain word, at most 32 bytes.
    fn check_name(&mut self, file: &SourceFile, what: &str, name: &Spanned<String>) {
        if !valid_name(name.get_ref()) || name.get_ref().len() > 32 {
            self.err(
                file,
                name.span(),
                format!(
                    "{what} name \"{}\" may use only letters, digits, '-', '_' and '.' (at most 32)",
                    name.get_ref()
                ),
            );
        }
    }

    fn zones(&mut self, file: &SourceFile, raw: &[raw::RawZone]) -> Vec<Zone> {
        let mut zones: Vec<Zone> = Vec::new();
        for z in raw {
            if zones.iter().any(|x| x.name == *z.name.get_ref()) {
                self.err(
                    file,
                    z.name.span(),
                    format!("duplicate zone \"{}\"", z.name.get_ref()),
                );
            }
            self.check_name(file, "zone", &z.name);
            let mut interfaces = Vec::new();
            for i in &z.interfaces {
                let name = i.get_ref();
                // IFNAMSIZ is 16 with the NUL; nft quotes the name, so no quotes inside.
                let stem = name.strip_suffix('*').unwrap_or(name);
                let ok = !stem.is_empty()
                    && name.len() <= 15
                    && stem
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
                if ok {
                    interfaces.push(name.clone());
                } else {
                    self.err(
                        file,
                        i.span(),
                        format!("interface name \"{name}\" is not a Linux interface name (1-15 of a-z, 0-9, -_.@, optionally ending in *)"),
                    );
                }
            }
            let mut networks = Vec::new();
            for n in &z.networks {
                match n.get_ref().parse::<ipnet::IpNet>() {
                    Ok(net) if net.trunc() == net => networks.push(net),
                    Ok(net) => self.err(
                        file,
                        n.span(),
                        format!(
                            "network \"{net}\" has host bits set (did you mean {}?)",
                            net.trunc()
                        ),
                    ),
                    Err(_) => self.err(
                        file,
                        n.span(),
                        format!(
                            "network \"{}\" is not a CIDR (e.g. \"10.10.1.0/24\" or \"fd00::/64\")",
                            n.get_ref()
                        ),
                    ),
                }
            }
            if z.interfaces.is_empty() && z.networks.is_empty() {
                self.err(
                    file,
                    z.name.span(),
                    format!(
                        "zone \"{}\" has neither interfaces nor networks",
                        z.name.get_ref()
                    ),
                );
            }
            // A packet must belong to one zone: overlapping networks or a shared interface
            // would let a rule meant for one zone admit another (OT reaching an IT listener).
            for (net, raw_net) in networks.iter().zip(&z.networks) {
                if let Some(other) = zones.iter().find(|o| {
                    o.networks
                        .iter()
                        .any(|n| n.contains(&net.addr()) || net.contains(&n.addr()))
                }) {
                    self.err(
                        file,
                        raw_net.span(),
                        format!(
                            "network {net} overlaps a network of zone \"{}\"",
                            other.name
                        ),
                    );
                }
            }
            for (iface, raw_iface) in interfaces.iter().zip(&z.interfaces) {
                if let Some(other) = zones.iter().find(|o| o.interfaces.contains(iface)) {
                    self.err(
                        file,
                        raw_iface.span(),
                        format!(
                            "interface \"{iface}\" already belongs to zone \"{}\"",
                            other.name
                        ),
                    );
                }
            }
            zones.push(Zone {
                name: z.name.get_ref().clone(),
                interfaces,
                networks,
                protected: z.protected,
                management: z.management,
            });
        }
        zones
    }

    fn firewall(
        &mut self,
        file: &SourceFile,
        f: &raw::RawFirewall,
        zones: &[Zone],
        zone_ref: &impl Fn(&mut Compiler, &Spanned<String>) -> Option<usize>,
    ) -> FirewallSettings {
        if zones.is_empty() {
            self.errors.push(file.error(
                0..0,
                "[firewall] needs [[zone]]s: the ruleset is built from them",
            ));
        }
        let log_prefix = f
            .log_prefix
            .as_ref()
            .map_or_else(|| "ztgate drop ".to_string(), |p| p.get_ref().clone());
        if let Some(p) = &f.log_prefix
            && (p.get_ref().len() > 20 || p.get_ref().contains(['"', '\\', '\n']))
        {
            // The kernel's log prefix holds 127 bytes; nft's own " input" suffix and readability say keep it short.
            self.err(
                file,
                p.span(),
                "log_prefix must be at most 20 characters, without quotes or backslashes",
            );
        }
        let mut allow = Vec::new();
        for a in &f.allow {
            self.check_name(file, "allow", &a.name);
            let port = match u16::try_from(*a.port.get_ref()) {
                Ok(p) if p > 0 => p,
                _ => {
                    self.err(
                        file,
                        a.port.span(),
                        format!("port {} outside 1..=65535", a.port.get_ref()),
                    );
                    0
                }
            };
            let protocol = match a
                .protocol
                .as_ref()
                .map(|p| (p.get_ref().as_str(), p.span()))
            {
                None | Some(("tcp", _)) => L4::Tcp,
                Some(("udp", _)) => L4::Udp,
                Some((other, span)) => {
                    self.err(
                        file,
                        span,
                        format!("protocol \"{other}\" must be \"tcp\" or \"udp\""),
                    );
                    L4::Tcp
                }
            };
            let allow_zones: Vec<usize> = match &a.zones {
                Some(list) => list.iter().filter_map(|z| zone_ref(self, z)).collect(),
                None => zones
                    .iter()
                    .enumerate()
                    .filter(|(_, z)| z.management)
                    .map(|(i, _)| i)
                    .collect(),
            };
            if allow_zones.is_empty() && a.zones.is_none() {
                self.err(
                    file,
                    a.name.span(),
                    format!(
                        "allow \"{}\" names no zones and no zone is a management zone: it would be unreachable",
                        a.name.get_ref()
                    ),
                );
            }
            allow.push(AllowedService {
                name: a.name.get_ref().clone(),
                port,
                protocol,
                zones: allow_zones,
            });
        }
        let quarantine_after = self.count(
            file,
            "quarantine_after",
            f.quarantine_after.as_ref(),
            5,
            0..=1000,
        );
        FirewallSettings {
            enforce: f.enforce.unwrap_or(true),
            keep_on_exit: f.keep_on_exit.unwrap_or(true),
            log_prefix,
            log_rate: u32::try_from(self.count(
                file,
                "log_rate",
                f.log_rate.as_ref(),
                10,
                1..=10_000,
            ))
            .unwrap_or(10),
            quarantine_after: u32::try_from(quarantine_after).unwrap_or(5),
            quarantine_window: self.duration(
                file,
                f.quarantine_window.as_ref(),
                Duration::from_secs(60),
            ),
            quarantine_time: self.duration(
                file,
                f.quarantine_time.as_ref(),
                Duration::from_secs(600),
            ),
            allow,
        }
    }

    fn service(&mut self, file: &SourceFile, s: &raw::RawService, base: &Path) -> Service {
        let protocol = match s.protocol.get_ref().as_str() {
            "modbus" => Protocol::Modbus,
            "mqtt" => Protocol::Mqtt,
            other => {
                // Reported here; the service stays defined so rules naming it do not pile up
                // follow-on errors.
                self.err(
                    file,
                    s.protocol.span(),
                    format!(
                        "protocol \"{other}\" is not supported (supported: \"modbus\", \"mqtt\")"
                    ),
                );
                Protocol::Modbus
            }
        };
        self.protocol_fields(file, s, protocol);
        let mqtt = self.mqtt_settings(file, s);
        let upstream_tls = s
            .upstream_tls
            .as_ref()
            .map(|t| self.upstream_tls(file, t, s.upstream.get_ref(), base));
        let upstream = s.upstream.get_ref();
        let port_ok = upstream.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !port_ok {
            self.err(
                file,
                s.upstream.span(),
                format!("upstream \"{upstream}\" must be host:port (e.g. \"192.0.2.10:502\")"),
            );
        }
        let server_names = match &s.server_names {
            Some(names) => names
                .iter()
                .map(|n| n.get_ref().to_ascii_lowercase())
                .collect(),
            None => vec![s.name.get_ref().to_ascii_lowercase()],
        };
        let units = match &s.units {
            Some(specs) => self.ranges(file, specs, "unit", 255),
            None => RangeSet::new(vec![(0, 255)]),
        };
        let on_deny = match s.on_deny.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
            None | Some(("illegal_function", _)) => OnDeny::IllegalFunction,
            Some(("illegal_data_address", _)) => OnDeny::IllegalDataAddress,
            Some(("reset", _)) => OnDeny::Reset,
            Some((other, span)) => {
                self.err(
                    file,
                    span,
                    format!(
                        "on_deny \"{other}\" must be \"illegal_function\", \"illegal_data_address\" or \"reset\""
                    ),
                );
                OnDeny::IllegalFunction
            }
        };
        Service {
            name: s.name.get_ref().clone(),
            protocol,
            upstream: upstream.clone(),
            server_names,
            units,
            upstream_in_flight: self.count(
                file,
                "upstream_in_flight",
                s.upstream_in_flight.as_ref(),
                1,
                1..=256,
            ),
            max_outstanding: self.count(
                file,
                "max_outstanding",
                s.max_outstanding.as_ref(),
                16,
                1..=256,
            ),
            max_upstream_connections: self.count(
                file,
                "max_upstream_connections",
                s.max_upstream_connections.as_ref(),
                64,
                1..=100_000,
            ),
            connect_timeout: self.duration(
                file,
                s.connect_timeout.as_ref(),
                Duration::from_secs(3),
            ),
            response_timeout: self.duration(
                file,
                s.response_timeout.as_ref(),
                Duration::from_secs(3),
            ),
            upstream_idle_timeout: self.duration(
                file,
                s.upstream_idle_timeout.as_ref(),
                Duration::from_secs(60),
            ),
            on_deny,
            mqtt,
            upstream_tls,
        }
    }

    /// Settings that mean something for one protocol only are refused on the other, so a
    /// misplaced line is an error rather than silently ignored.
    fn protocol_fields(&mut self, file: &SourceFile, s: &raw::RawService, protocol: Protocol) {
        let modbus_only = [
            (
                "units",
                s.units.as_ref().and_then(|u| u.first()).map(|u| u.span()),
            ),
            (
                "upstream_in_flight",
                s.upstream_in_flight.as_ref().map(|v| v.span()),
            ),
            (
                "max_outstanding",
                s.max_outstanding.as_ref().map(|v| v.span()),
            ),
            (
                "response_timeout",
                s.response_timeout.as_ref().map(|v| v.span()),
            ),
            ("on_deny", s.on_deny.as_ref().map(|v| v.span())),
        ];
        let mqtt_only = [
            (
                "max_packet_size",
                s.max_packet_size.as_ref().map(|v| v.span()),
            ),
            ("client_id", s.client_id.as_ref().map(|v| v.span())),
            ("username", s.username.as_ref().map(|v| v.span())),
            (
                "denied_publish_v311",
                s.denied_publish_v311.as_ref().map(|v| v.span()),
            ),
            (
                "topic_alias_maximum",
                s.topic_alias_maximum.as_ref().map(|v| v.span()),
            ),
            ("upstream_tls", s.upstream_tls.as_ref().map(|v| v.span())),
        ];
        let (other, fields): (&str, &[_]) = match protocol {
            Protocol::Modbus => ("mqtt", &mqtt_only),
            Protocol::Mqtt => ("modbus", &modbus_only),
        };
        for (name, span) in fields {
            if let Some(span) = span.clone() {
                self.err(
                    file,
                    span,
                    format!(
                        "{name} applies to {other} services only; service \"{}\" speaks {}",
                        s.name.get_ref(),
                        protocol.name()
                    ),
                );
            }
        }
    }

    fn mqtt_settings(&mut self, file: &SourceFile, s: &raw::RawService) -> MqttSettings {
        let defaults = MqttSettings::default();
        let client_id = match s
            .client_id
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("require", _)) => ClientIdBinding::Require,
            Some(("rewrite", _)) => ClientIdBinding::Rewrite,
            Some((other, span)) => {
                self.err(
                    file,
                    span,
                    format!("client_id \"{other}\" must be \"require\" or \"rewrite\""),
                );
                defaults.client_id
            }
        };
        let username = match s
            .username
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("require", _)) => UsernameBinding::Require,
            Some(("forward", _)) => UsernameBinding::Forward,
            Some((other, span)) => {
                self.err(
                    file,
                    span,
                    format!("username \"{other}\" must be \"require\" or \"forward\""),
                );
                defaults.username
            }
        };
        let denied_publish_v311 = match s
            .denied_publish_v311
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v.span()))
        {
            None | Some(("acknowledge", _)) => DeniedPublishV311::Acknowledge,
            Some(("disconnect", _)) => DeniedPublishV311::Disconnect,
            Some((other, span)) => {
                self.err(
                    file,
                    span,
                    format!(
                        "denied_publish_v311 \"{other}\" must be \"acknowledge\" or \"disconnect\""
                    ),
                );
                defaults.denied_publish_v311
            }
        };
        MqttSettings {
            // At least a CONNECT with short fields; at most what MQTT can frame.
            max_packet_size: self.count(
                file,
                "max_packet_size",
                s.max_packet_size.as_ref(),
                defaults.max_packet_size,
                64..=268_435_460,
            ),
            client_id,
            username,
            denied_publish_v311,
            topic_alias_maximum: u16::try_from(self.count(
                file,
                "topic_alias_maximum",
                s.topic_alias_maximum.as_ref(),
                usize::from(defaults.topic_alias_maximum),
                0..=1024,
            ))
            .unwrap_or(defaults.topic_alias_maximum),
        }
    }

    fn upstream_tls(
        &mut self,
        file: &SourceFile,
        t: &Spanned<raw::RawUpstreamTls>,
        upstream: &str,
        base: &Path,
    ) -> UpstreamTls {
        let raw = t.get_ref();
        let client_cert = match (&raw.cert, &raw.key) {
            (Some(c), Some(k)) => Some((base.join(c.get_ref()), base.join(k.get_ref()))),
            (None, None) => None,
            _ => {
                self.err(
                    file,
                    t.span(),
                    "upstream_tls needs both cert and key, or neither",
                );
                None
            }
        };
        let server_name = match &raw.server_name {
            Some(n) => {
                if rustls::pki_types::ServerName::try_from(n.get_ref().as_str()).is_err() {
                    self.err(
                        file,
                        n.span(),
                        format!(
                            "server_name \"{}\" is not a DNS name or IP address",
                            n.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => {
                let host = upstream
                    .rsplit_once(':')
                    .map_or(upstream, |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                host.to_string()
            }
        };
        UpstreamTls {
            ca: base.join(raw.ca.get_ref()),
            client_cert,
            server_name,
        }
    }

    fn policy(
        &mut self,
        files: &[SourceFile],
        services: &[Service],
        service_ids: &HashMap<String, ServiceId>,
        tls: &TlsSettings,
    ) -> PolicyModel {
        let mut parsed: Vec<(&SourceFile, RawPolicyFile)> = Vec::new();
        for f in files {
            match f.parse::<RawPolicyFile>() {
                Ok(p) => parsed.push((f, p)),
                Err(e) => self.errors.push(e),
            }
        }

        // Roles from every file first: any file may use a role another file defines.
        let mut roles: Vec<RoleDef> = Vec::new();
        let mut role_ids: HashMap<String, (RoleId, String)> = HashMap::new();
        for (f, p) in &parsed {
            for (name, description) in &p.roles {
                let here = f.error(name.span(), "").to_string();
                let here = here.trim_end_matches(": ").to_string();
                if let Some((_, first)) = role_ids.get(name.get_ref()) {
                    self.err(
                        f,
                        name.span(),
                        format!(
                            "duplicate role \"{}\" (first defined at {first})",
                            name.get_ref()
                        ),
                    );
                    continue;
                }
                if !valid_name(name.get_ref()) {
                    self.err(
                        f,
                        name.span(),
                        format!(
                            "role name \"{}\" may use only letters, digits, '-', '_' and '.'",
                            name.get_ref()
                        ),
                    );
                }
                role_ids.insert(name.get_ref().clone(), (RoleId(roles.len()), here));
                roles.push(RoleDef {
                    name: name.get_ref().clone(),
                    description: description.clone(),
                });
            }
        }
        let mut role_ref = |c: &mut Compiler, f: &SourceFile, r: &Spanned<String>| {
            let id = role_ids.get(r.get_ref()).map(|(id, _)| *id);
            if id.is_none() {
                c.err(
                    f,
                    r.span(),
                    format!(
                        "role \"{}\" is not defined (define it under [roles] in a policy file)",
                        r.get_ref()
                    ),
                );
            }
            id
        };

        let mut identities = Vec::new();
        let mut rules = Vec::new();
        let mut rule_ids: HashMap<String, String> = HashMap::new();
        for (f, p) in &parsed {
            for i in &p.identities {
                let pattern = i.pattern.get_ref();
                if pattern.is_empty() || pattern.trim_end_matches('*').contains('*') {
                    self.err(
                        f,
                        i.pattern.span(),
                        format!(
                            "identity pattern \"{pattern}\" must be an exact identity or a prefix ending in a single '*'"
                        ),
                    );
                }
                let ids: Vec<RoleId> = i
                    .roles
                    .iter()
                    .filter_map(|r| role_ref(self, f, r))
                    .collect();
                identities.push(IdentityDef {
                    pattern: pattern.clone(),
                    roles: ids,
                });
            }
            for r in &p.rules {
                let here = f.error(r.id.span(), "").to_string();
                let here = here.trim_end_matches(": ").to_string();
                if let Some(first) = rule_ids.get(r.id.get_ref()) {
                    self.err(
                        f,
                        r.id.span(),
                        format!(
                            "duplicate rule id \"{}\" (first defined at {first})",
                            r.id.get_ref()
                        ),
                    );
                    continue;
                }
                if !valid_name(r.id.get_ref()) {
                    self.err(
                        f,
                        r.id.span(),
                        format!(
                            "rule id \"{}\" may use only letters, digits, '-', '_' and '.'",
                            r.id.get_ref()
                        ),
                    );
                }
                rule_ids.insert(r.id.get_ref().clone(), here.clone());
                if let Some(rule) = self.rule(f, r, &mut role_ref, services, service_ids, here) {
                    rules.push(rule);
                }
            }
        }

        // Warnings: what compiles but is probably not what the engineer meant.
        if files.is_empty() {
            self.warnings
                .push("no policy files: every request will be denied".to_string());
        }
        for (id, role) in roles.iter().enumerate() {
            let mapped = identities.iter().any(|i| i.roles.contains(&RoleId(id)));
            if !mapped && !tls.certificate_roles {
                self.warnings.push(format!(
                    "role \"{}\" is given to no identity: its rules can never match",
                    role.name
                ));
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            if let Some(by) = rules.iter().take(i).find(|earlier| earlier.shadows(rule)) {
                self.warnings.push(format!(
                    "{}: rule \"{}\" can never decide anything: rule \"{}\" ({}) already allows all it allows",
                    rule.location, rule.id, by.id, by.location
                ));
            }
        }
        for rule in &rules {
            let Some(m) = &rule.mqtt else { continue };
            if !m
                .publish
                .iter()
                .chain(&m.subscribe)
                .any(|f| f.contains(IDENTITY))
            {
                continue;
            }
            for i in &identities {
                if i.pattern.contains('/') && i.roles.iter().any(|r| rule.roles.contains(r)) {
                    self.warnings.push(format!(
                        "{}: rule \"{}\" has {IDENTITY} filters, which never match identities containing '/' such as \"{}\" (a URI SAN): give MQTT devices certificates whose identity is one topic level (a CN, no URI SAN)",
                        rule.location, rule.id, i.pattern
                    ));
                }
            }
        }
        for bounded in rules
            .iter()
            .filter(|r| r.modbus.as_ref().is_some_and(|m| m.values.is_some()))
        {
            for other in &rules {
                if other.undercuts_bounds_of(bounded) {
                    self.warnings.push(format!(
                        "{}: rule \"{}\" allows writes without value bounds to registers that rule \"{}\" bounds; the bounds do not protect them for the roles both rules share",
                        other.location, other.id, bounded.id
                    ));
                }
            }
        }

        for rule in &rules {
            let Some(m) = &rule.modbus else { continue };
            let limited = !m.read_addresses.is_everything()
                || !m.write_addresses.is_everything()
                || m.values.is_some();
            let unaddressed: Vec<String> = m
                .functions
                .iter()
                .filter(|f| !matches!(f, 1..=6 | 15 | 16 | 20..=24))
                .map(|f| Function(f).to_string())
                .collect();
            if limited && !unaddressed.is_empty() {
                self.warnings.push(format!(
                    "{}: rule \"{}\" limits addresses or values, but {} address no registers: the limits do not apply to them",
                    rule.location,
                    rule.id,
                    unaddressed.join(", ")
                ));
            }
        }

        PolicyModel {
            roles,
            identities,
            rules,
            services: services.iter().map(|s| s.name.clone()).collect(),
        }
    }

    fn rule(
        &mut self,
        f: &SourceFile,
        r: &RawRule,
        role_ref: &mut impl FnMut(&mut Compiler, &SourceFile, &Spanned<String>) -> Option<RoleId>,
        services: &[Service],
        service_ids: &HashMap<String, ServiceId>,
        location: String,
    ) -> Option<RuleDef> {
        let roles: Vec<RoleId> = r
            .roles
            .iter()
            .filter_map(|x| role_ref(self, f, x))
            .collect();
        if r.roles.is_empty() {
            self.err(
                f,
                r.id.span(),
                format!("rule \"{}\" names no roles", r.id.get_ref()),
            );
        }
        let mut rule_services = Vec::new();
        for s in &r.services {
            match service_ids.get(s.get_ref()) {
                Some(id) => rule_services.push(*id),
                None => self.err(
                    f,
                    s.span(),
                    format!(
                        "service \"{}\" is not defined in the gateway configuration",
                        s.get_ref()
                    ),
                ),
            }
        }
        if r.services.is_empty() {
            self.err(
                f,
                r.id.span(),
                format!("rule \"{}\" names no services", r.id.get_ref()),
            );
        }
        let modbus = r.modbus.as_ref().map(|m| self.modbus_rule(f, m));
        let mqtt = r.mqtt.as_ref().map(|m| self.mqtt_rule(f, m));
        let protocol = match (&modbus, &mqtt) {
            (Some(_), None) => Some(Protocol::Modbus),
            (None, Some(_)) => Some(Protocol::Mqtt),
            (None, None) => {
                self.err(
                    f,
                    r.id.span(),
                    format!(
                        "rule \"{}\" says nothing it allows: add a [rule.modbus] or [rule.mqtt] table",
                        r.id.get_ref()
                    ),
                );
                None
            }
            (Some(_), Some(_)) => {
                self.err(
                    f,
                    r.id.span(),
                    format!(
                        "rule \"{}\" has both [rule.modbus] and [rule.mqtt]: write one rule per protocol",
                        r.id.get_ref()
                    ),
                );
                None
            }
        };
        for (id, s) in rule_services.iter().zip(r.services.iter()) {
            if let (Some(service), Some(protocol)) = (services.get(id.0), protocol)
                && service.protocol != protocol
            {
                self.err(
                    f,
                    s.span(),
                    format!(
                        "service \"{}\" speaks {}, but this rule is a [rule.{}] rule",
                        service.name,
                        service.protocol.name(),
                        protocol.name()
                    ),
                );
            }
        }
        Some(RuleDef {
            id: r.id.get_ref().clone(),
            description: r.description.clone(),
            location,
            roles,
            services: rule_services,
            modbus,
            mqtt,
        })
    }

    fn mqtt_rule(&mut self, f: &SourceFile, m: &Spanned<raw::RawMqttRule>) -> MqttMatch {
        let raw = m.get_ref();
        let mut filters = |list: &[Spanned<String>]| -> Vec<String> {
            let mut out = Vec::new();
            for filter in list {
                match check_filter(filter.get_ref()) {
                    Ok(()) => out.push(filter.get_ref().clone()),
                    Err(e) => self.err(
                        f,
                        filter.span(),
                        format!("topic filter \"{}\": {e}", filter.get_ref().escape_debug()),
                    ),
                }
            }
            out
        };
        let publish = filters(&raw.publish);
        let subscribe = filters(&raw.subscribe);
        if raw.publish.is_empty() && raw.subscribe.is_empty() {
            self.err(
                f,
                m.span(),
                "a [rule.mqtt] table lists neither publish nor subscribe filters: it allows nothing",
            );
        }
        let max_qos =
            u8::try_from(self.count(f, "max_qos", raw.max_qos.as_ref(), 2, 0..=2)).unwrap_or(2);
        let max_payload = raw.max_payload.as_ref().map(|_| {
            self.count(
                f,
                "max_payload",
                raw.max_payload.as_ref(),
                0,
                0..=268_435_455,
            )
        });
        MqttMatch {
            publish,
            subscribe,
            max_qos,
            retain: raw.retain.unwrap_or(false),
            max_payload,
        }
    }

    fn modbus_rule(&mut self, f: &SourceFile, m: &RawModbusRule) -> ModbusMatch {
        let mut functions = FunctionSet::default();
        for spec in &m.functions {
            match spec.get_ref() {
                FunctionSpec::Code(n) => match u8::try_from(*n) {
                    Ok(code @ 1..=127) => functions.insert(code),
                    _ => self.err(f, spec.span(), format!("function code {n} outside 1..=127")),
                },
                FunctionSpec::Name(name) => {
                    if let Some(codes) = preset(name) {
                        codes.iter().for_each(|c| functions.insert(*c));
                    } else if let Some(func) = Function::from_name(name) {
                        functions.insert(func.0);
                    } else {
                        let presets: Vec<&str> = crate::protocol::modbus::PRESETS
                            .iter()
                            .map(|(n, _)| *n)
                            .collect();
                        self.err(
                            f,
                            spec.span(),
                            format!(
                                "unknown Modbus function \"{name}\" (presets: {}; functions: {}; or a number 1..=127)",
                                presets.join(", "),
                                Function::names().collect::<Vec<_>>().join(", ")
                            ),
                        );
                    }
                }
            }
        }
        if m.functions.is_empty() {
            self.warnings.push(
                f.error(
                    0..0,
                    "a [rule.modbus] table lists no functions: it allows nothing",
                )
                .to_string(),
            );
        }
        let all_addresses = RangeSet::new(vec![(0, 65535)]);
        let addresses = m
            .addresses
            .as_ref()
            .map(|a| self.ranges(f, a, "address", 65535));
        let read = m
            .read_addresses
            .as_ref()
            .map(|a| self.ranges(f, a, "address", 65535))
            .or_else(|| addresses.clone())
            .unwrap_or_else(|| all_addresses.clone());
        let write = m
            .write_addresses
            .as_ref()
            .map(|a| self.ranges(f, a, "address", 65535))
            .or(addresses)
            .unwrap_or(all_addresses);
        let (units, explicit_units) = match &m.units {
            Some(u) => (self.ranges(f, u, "unit", 255), true),
            None => (RangeSet::new(vec![(0, 255)]), false),
        };
        let values = m.values.as_ref().and_then(|v| {
            let b = v.get_ref();
            let ok = (0..=65535).contains(&b.min) && (0..=65535).contains(&b.max) && b.min <= b.max;
            if ok {
                Some(ValueBounds {
                    min: u16::try_from(b.min).unwrap_or(0),
                    max: u16::try_from(b.max).unwrap_or(u16::MAX),
                })
            } else {
                self.err(
                    f,
                    v.span(),
                    format!(
                        "value bounds {}..={} must lie within 0..=65535 with min ≤ max",
                        b.min, b.max
                    ),
                );
                None
            }
        });
        let coil_values = match &m.coil_values {
            None => CoilValues {
                on: true,
                off: true,
            },
            Some(v) => {
                let mut c = CoilValues {
                    on: false,
                    off: false,
                };
                for s in v.get_ref() {
                    match s.as_str() {
                        "on" => c.on = true,
                        "off" => c.off = true,
                        other => self.err(
                            f,
                            v.span(),
                            format!("coil value \"{other}\" must be \"on\" or \"off\""),
                        ),
                    }
                }
                c
            }
        };
        // Unit 0 is broadcast: a write (or diagnostic, or vendor code) there reaches every
        // device on a serial line behind a gateway, so only a rule that lists 0 on its own
        // allows it; "0-255" meant as "any unit" does not.
        let broadcast = explicit_units
            && m.units.iter().flatten().any(|u| {
                matches!(u.get_ref(), RangeSpec::One(0))
                    || matches!(u.get_ref(), RangeSpec::Text(t) if t.trim() == "0")
            });
        ModbusMatch {
            functions,
            units,
            broadcast,
            read_addresses: read,
            write_addresses: write,
            values,
            coil_values,
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests;
