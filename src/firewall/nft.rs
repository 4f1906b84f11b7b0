//! Applying a [`Plan`] with the `nft` binary (JSON API: `nft -j -f -`), reading the table back,
//! removing it, its counters, and the quarantine set.
//!
//! Blocking (it runs a process); call it from `spawn_blocking` inside the runtime.

use super::render::{Quarantined, quarantine_elem, quarantine_set, to_json};
use super::{Plan, QUARANTINE_V4, QUARANTINE_V6, TABLE, UPSTREAMS_V4, UPSTREAMS_V6};
use nftables::batch::Batch;
use nftables::schema::{self, NfListObject, Nftables};
use nftables::types::NfFamily;
use serde_json::Value;
use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    #[error("`{0}` not found: install the nftables package (apt-get install nftables)")]
    NftMissing(String),
    #[error(
        "not permitted to change the firewall: ztgate needs CAP_NET_ADMIN (run as root, or grant it in the systemd unit)"
    )]
    NoPermission,
    #[error("nft rejected the ruleset: {0}")]
    Rejected(String),
    #[error("the table read back differs from the one applied: {0}")]
    Mismatch(String),
    #[error("cannot run nft: {0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected nft output: {0}")]
    Output(String),
}

/// How to run nft: `nft` itself, or a wrapper (e.g. `ip netns exec NS nft` in tests).
#[derive(Clone, Debug)]
pub struct Nft {
    program: String,
    args: Vec<String>,
}

impl Default for Nft {
    fn default() -> Nft {
        Nft {
            program: "nft".into(),
            args: Vec::new(),
        }
    }
}

/// A rule's counter, by the rule's comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounter {
    pub chain: String,
    pub comment: String,
    pub packets: u64,
    pub bytes: u64,
}

impl Nft {
    /// nft run through another program, e.g. `Nft::wrapped("ip", &["netns", "exec", "ns1", "nft"])`.
    pub fn wrapped(program: &str, args: &[&str]) -> Nft {
        Nft {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    fn run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Result<String, String>, FirewallError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => FirewallError::NftMissing(self.program.clone()),
            _ => FirewallError::Io(e),
        })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            return Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        if stderr.contains("Operation not permitted") {
            return Err(FirewallError::NoPermission);
        }
        // `ip netns exec` with a missing nft says so on stderr.
        if stderr.contains("No such file or directory")
            && stderr.contains("nft")
            && !stderr.contains("table")
        {
            return Err(FirewallError::NftMissing("nft".into()));
        }
        Ok(Err(stderr))
    }

    fn apply_batch(&self, batch: &Nftables<'_>) -> Result<(), FirewallError> {
        let payload =
            serde_json::to_string(batch).map_err(|e| FirewallError::Output(e.to_string()))?;
        match self.run(&["-j", "-f", "-"], Some(&payload))? {
            Ok(_) => Ok(()),
            Err(stderr) => Err(FirewallError::Rejected(stderr)),
        }
    }

    /// `nft -j list table inet ztgate`, or `None` when there is no such table.
    pub fn list(&self) -> Result<Option<Value>, FirewallError> {
        match self.run(&["-j", "list", "table", "inet", TABLE], None)? {
            Ok(out) => serde_json::from_str(&out)
                .map(Some)
                .map_err(|e| FirewallError::Output(e.to_string())),
            Err(stderr) if stderr.contains("No such file or directory") => Ok(None),
            Err(stderr) => Err(FirewallError::Rejected(stderr)),
        }
    }

    /// Replaces the table with `plan` in one transaction, keeping quarantined addresses, then
    /// reads it back and checks it.
    pub fn apply(&self, plan: &Plan) -> Result<(), FirewallError> {
        let keep = match self.list()? {
            Some(listing) => quarantined(&listing),
            None => Vec::new(),
        };
        self.apply_batch(&to_json(plan, &keep))?;
        let listing = self
            .list()?
            .ok_or_else(|| FirewallError::Mismatch("the table is missing after apply".into()))?;
        verify(plan, &listing)
    }

    /// Deletes the table (the deliberate way out of fail-closed). `false` if there was none.
    pub fn remove(&self) -> Result<bool, FirewallError> {
        match self.run(&["delete", "table", "inet", TABLE], None)? {
            Ok(_) => Ok(true),
            Err(stderr) if stderr.contains("No such file or directory") => Ok(false),
            Err(stderr) => Err(FirewallError::Rejected(stderr)),
        }
    }

    /// Counters of every rule that has one, or `None` when the table is not loaded.
    pub fn counters(&self) -> Result<Option<Vec<RuleCounter>>, FirewallError> {
        Ok(self.list()?.map(|l| counters(&l)))
    }

    pub fn quarantine_list(&self) -> Result<Vec<Quarantined>, FirewallError> {
        Ok(self.list()?.map(|l| quarantined(&l)).unwrap_or_default())
    }

    fn element(&self, add: bool, addr: IpAddr, seconds: u32) -> Result<(), FirewallError> {
        let element = NfListObject::Element(schema::Element {
            family: NfFamily::INet,
            table: Cow::Borrowed(TABLE),
            name: Cow::Borrowed(quarantine_set(&addr)),
            elem: Cow::Owned(vec![if add {
                quarantine_elem(addr, seconds)
            } else {
                nftables::expr::Expression::String(Cow::Owned(addr.to_string()))
            }]),
        });
        let mut batch = Batch::new();
        if add {
            batch.add(element);
        } else {
            batch.delete(element);
        }
        self.apply_batch(&batch.to_nftables())
    }

    /// Puts an address into the quarantine set for `seconds`: the input chain drops all of it.
    pub fn quarantine_add(&self, addr: IpAddr, seconds: u32) -> Result<(), FirewallError> {
        let addr = addr.to_canonical();
        if addr.is_loopback() || addr.is_unspecified() || addr.is_multicast() {
            return Err(FirewallError::Rejected(format!(
                "{addr} cannot be quarantined (loopback, unspecified or multicast)"
            )));
        }
        self.element(true, addr, seconds)
    }

    pub fn quarantine_remove(&self, addr: IpAddr) -> Result<(), FirewallError> {
        match self.element(false, addr.to_canonical(), 0) {
            Err(FirewallError::Rejected(e)) if e.contains("No such file or directory") => {
                Err(FirewallError::Rejected(format!(
                    "{addr} is not quarantined (or the table is not loaded)"
                )))
            }
            other => other,
        }
    }
}

/// The `nftables` array of a listing.
fn objects(listing: &Value) -> &[Value] {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn quarantined(listing: &Value) -> Vec<Quarantined> {
    let mut out = Vec::new();
    for set in objects(listing).iter().filter_map(|o| o.get("set")) {
        let name = set.get("name").and_then(Value::as_str);
        if !matches!(name, Some(QUARANTINE_V4 | QUARANTINE_V6)) {
            continue;
        }
        for e in set
            .get("elem")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // With a timeout an element lists as {"elem": {"val", "timeout", "expires"}}.
            let (val, left) = match e.get("elem") {
                Some(inner) => (
                    inner.get("val").and_then(Value::as_str),
                    inner
                        .get("expires")
                        .or_else(|| inner.get("timeout"))
                        .and_then(Value::as_u64),
                ),
                None => (e.as_str(), None),
            };
            if let Some(addr) = val.and_then(|v| v.parse::<IpAddr>().ok()) {
                out.push(Quarantined {
                    addr,
                    seconds_left: u32::try_from(left.unwrap_or(60)).unwrap_or(u32::MAX),
                });
            }
        }
    }
    out
}

fn counters(listing: &Value) -> Vec<RuleCounter> {
    let mut out = Vec::new();
    for rule in objects(listing).iter().filter_map(|o| o.get("rule")) {
        let counter = rule
            .get("expr")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|s| s.get("counter"));
        if let Some(c) = counter {
            out.push(RuleCounter {
                chain: rule
                    .get("chain")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_string(),
                comment: rule
                    .get("comment")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                packets: c.get("packets").and_then(Value::as_u64).unwrap_or(0),
                bytes: c.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            });
        }
    }
    out
}

/// The table as listed must be the plan: the three base chains with their hooks and policies,
/// every rule in order (by comment), the sets, the upstream elements.
fn verify(plan: &Plan, listing: &Value) -> Result<(), FirewallError> {
    let objs = objects(listing);
    for chain in &plan.chains {
        let name = chain.hook.chain();
        let found = objs
            .iter()
            .filter_map(|o| o.get("chain"))
            .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| FirewallError::Mismatch(format!("chain {name} missing")))?;
        let policy = if chain.policy_drop { "drop" } else { "accept" };
        if found.get("hook").and_then(Value::as_str) != Some(name)
            || found.get("policy").and_then(Value::as_str) != Some(policy)
        {
            return Err(FirewallError::Mismatch(format!(
                "chain {name} is not hooked to {name} with policy {policy}: {found}"
            )));
        }
        let want: Vec<&str> = plan
            .rules_in(chain.hook)
            .map(|r| r.comment.as_str())
            .collect();
        let have: Vec<&str> = objs
            .iter()
            .filter_map(|o| o.get("rule"))
            .filter(|r| r.get("chain").and_then(Value::as_str) == Some(name))
            .map(|r| r.get("comment").and_then(Value::as_str).unwrap_or(""))
            .collect();
        if want != have {
            return Err(FirewallError::Mismatch(format!(
                "chain {name} has rules {have:?}, expected {want:?}"
            )));
        }
    }
    let sets: Vec<&Value> = objs.iter().filter_map(|o| o.get("set")).collect();
    for name in [UPSTREAMS_V4, UPSTREAMS_V6, QUARANTINE_V4, QUARANTINE_V6] {
        if !sets
            .iter()
            .any(|s| s.get("name").and_then(Value::as_str) == Some(name))
        {
            return Err(FirewallError::Mismatch(format!("set {name} missing")));
        }
    }
    // The upstream pairs themselves, not just how many.
    let mut loaded: Vec<String> = sets
        .iter()
        .filter(|s| {
            matches!(
                s.get("name").and_then(Value::as_str),
                Some(UPSTREAMS_V4 | UPSTREAMS_V6)
            )
        })
        .flat_map(|s| {
            s.get("elem")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .map(
            |e| match e.get("concat").and_then(Value::as_array).map(Vec::as_slice) {
                Some([addr, port]) => format!("{} . {}", addr.as_str().unwrap_or("?"), port),
                _ => e.to_string(),
            },
        )
        .collect();
    let mut planned: Vec<String> = plan
        .upstreams
        .iter()
        .map(|a| format!("{} . {}", a.ip(), a.port()))
        .collect();
    loaded.sort();
    planned.sort();
    if loaded != planned {
        return Err(FirewallError::Mismatch(format!(
            "upstream set holds {loaded:?}, planned {planned:?}"
        )));
    }
    for name in [QUARANTINE_V4, QUARANTINE_V6] {
        let timeout = sets
            .iter()
            .filter(|s| s.get("name").and_then(Value::as_str) == Some(name))
            .flat_map(|s| {
                s.get("flags")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .any(|f| f == "timeout");
        if !timeout {
            return Err(FirewallError::Mismatch(format!(
                "set {name} lacks the timeout flag"
            )));
        }
    }
    Ok(())
}
