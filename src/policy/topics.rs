//! MQTT topic filters compiled into a trie, with `{identity}` templates.
//!
//! A rule's filter (`plant1/line1/{identity}/telemetry/#`) is split into levels once, at
//! compile time. Literal levels are hash-map edges, `+` and `#` are their own edges, and a level
//! that mentions `{identity}` is a template edge, rendered against the session's identity while
//! matching — without allocating — so one trie serves every identity. An identity that is
//! substituted may contain `/` (SPIFFE ids do): it then spans several topic levels, literally.
//! An identity that contains `+`, `#` or NUL, or is empty, never matches a template: it must not
//! be able to widen a rule.
//!
//! Matching follows MQTT 3.1.1 §4.7 / 5.0 §4.7: `+` is one whole level, `#` the rest including
//! the parent level itself (`a/#` matches `a`), and a filter starting with a wildcard never
//! matches a topic starting with `$` (`$SYS/…`).

use super::RuleRef;

/// One piece of a template level.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Identity,
}

/// A level containing `{identity}`, e.g. `dev-{identity}`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Template(Vec<Piece>);

impl Template {
    /// Whether `text` starts with this template rendered for `identity`; the length matched.
    fn prefix_len(&self, text: &str, identity: &str) -> Option<usize> {
        let mut at = 0usize;
        for piece in &self.0 {
            let want: &str = match piece {
                Piece::Text(t) => t,
                Piece::Identity => identity,
            };
            let rest = text.get(at..)?;
            if !rest.starts_with(want) {
                return None;
            }
            at = at.checked_add(want.len())?;
        }
        Some(at)
    }
}

use crate::config::IDENTITY;

/// Whether an identity may be substituted into a template: one topic level, no wildcard, no
/// NUL, not empty. An identity with `/` (every URI identity) never is: substituted, it would
/// span levels, and one device's topics could then lie inside another's
/// (`…/{identity}/cmd/#` of `a/b` contains `…/{identity}/…` of `a/b/cmd`).
pub fn substitutable(identity: &str) -> bool {
    !identity.is_empty() && !identity.contains(['+', '#', '\0', '/'])
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Node {
    /// Literal levels, sorted: a binary search over short strings beats hashing them.
    literal: Vec<(Box<str>, Node)>,
    plus: Option<Box<Node>>,
    templates: Vec<(Template, Node)>,
    /// Rules whose filter ends in `#` right after this node's level.
    hash: Vec<RuleRef>,
    /// Rules whose filter ends exactly at this node.
    end: Vec<RuleRef>,
}

/// Splits `text` at its first level: the level and what follows the `/` (None at the end).
fn split_level(text: &str) -> (&str, Option<&str>) {
    match text.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (text, None),
    }
}

impl Node {
    /// Adds a validated filter (see `config`: levels valid, `#` last) for `rule`.
    pub(crate) fn insert(&mut self, filter: &str, rule: RuleRef) {
        let mut node = self;
        let mut rest = Some(filter);
        while let Some(text) = rest {
            let (level, next) = split_level(text);
            rest = next;
            if level == "#" {
                node.hash.push(rule);
                return;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Default::default)
            } else if level.contains(IDENTITY) {
                let template = parse_template(level);
                let i = match node.templates.iter().position(|(t, _)| *t == template) {
                    Some(i) => i,
                    None => {
                        node.templates.push((template, Node::default()));
                        node.templates.len() - 1
                    }
                };
                match node.templates.get_mut(i) {
                    Some((_, n)) => n,
                    None => return,
                }
            } else {
                let i = match node.literal.binary_search_by(|(l, _)| (**l).cmp(level)) {
                    Ok(i) => i,
                    Err(i) => {
                        node.literal.insert(i, (level.into(), Node::default()));
                        i
                    }
                };
                match node.literal.get_mut(i) {
                    Some((_, n)) => n,
                    None => return,
                }
            };
        }
        node.end.push(rule);
    }

    fn child(&self, level: &str) -> Option<&Node> {
        let i = self
            .literal
            .binary_search_by(|(l, _)| (**l).cmp(level))
            .ok()?;
        self.literal.get(i).map(|(_, n)| n)
    }

    /// Calls `found` for every rule with a filter that matches the topic name `topic`.
    pub(crate) fn matches(&self, topic: &str, identity: &str, found: &mut impl FnMut(RuleRef)) {
        let dollar = topic.starts_with('$');
        self.walk(Some(topic), true, dollar, identity, found);
    }

    fn walk(
        &self,
        rest: Option<&str>,
        root: bool,
        dollar: bool,
        identity: &str,
        found: &mut impl FnMut(RuleRef),
    ) {
        let wild_ok = !(root && dollar);
        if wild_ok {
            self.hash.iter().copied().for_each(&mut *found);
        }
        let Some(text) = rest else {
            self.end.iter().copied().for_each(&mut *found);
            return;
        };
        let (level, next) = split_level(text);
        if let Some(child) = self.child(level) {
            child.walk(next, false, dollar, identity, found);
        }
        if wild_ok && let Some(child) = &self.plus {
            child.walk(next, false, dollar, identity, found);
        }
        self.templates_from(text, identity, |child, after| {
            child.walk(after, false, dollar, identity, &mut *found);
        });
    }

    /// For each template edge that matches the start of `text` up to a level boundary: the
    /// child and what follows.
    fn templates_from<'t>(
        &self,
        text: &'t str,
        identity: &str,
        mut each: impl FnMut(&Node, Option<&'t str>),
    ) {
        if self.templates.is_empty() || !substitutable(identity) {
            return;
        }
        for (template, child) in &self.templates {
            let Some(len) = template.prefix_len(text, identity) else {
                continue;
            };
            match text.get(len..) {
                Some("") => each(child, None),
                Some(after) => {
                    if let Some(after) = after.strip_prefix('/') {
                        each(child, Some(after));
                    }
                }
                None => {}
            }
        }
    }

    /// Calls `found` for every rule whose filter matches every topic `filter` matches (the
    /// subscription is covered). `filter` is a valid topic filter (not a shared one).
    pub(crate) fn covers(&self, filter: &str, identity: &str, found: &mut impl FnMut(RuleRef)) {
        let dollar = filter.starts_with('$');
        self.cover(Some(filter), true, dollar, identity, found);
    }

    fn cover(
        &self,
        rest: Option<&str>,
        root: bool,
        dollar: bool,
        identity: &str,
        found: &mut impl FnMut(RuleRef),
    ) {
        // A rule's wildcard at the root does not reach `$` topics; a subscription whose first
        // level is a wildcard does not either, so only a literal `$…` first level is excluded.
        let wild_ok = !(root && dollar);
        if wild_ok {
            self.hash.iter().copied().for_each(&mut *found);
        }
        let Some(text) = rest else {
            self.end.iter().copied().for_each(&mut *found);
            return;
        };
        let (level, next) = split_level(text);
        match level {
            // Only a rule's `#` here covers the rest of the subscription: done above.
            "#" => {}
            "+" => {
                if let Some(child) = &self.plus {
                    child.cover(next, false, dollar, identity, found);
                }
            }
            _ => {
                if let Some(child) = self.child(level) {
                    child.cover(next, false, dollar, identity, found);
                }
                if wild_ok && let Some(child) = &self.plus {
                    child.cover(next, false, dollar, identity, found);
                }
                // A template renders to literal text only; the subscription's levels it spans
                // must be literal as well, which the identity check guarantees (no `+`/`#`).
                self.templates_from(text, identity, |child, after| {
                    child.cover(after, false, dollar, identity, &mut *found);
                });
            }
        }
    }
}

fn parse_template(level: &str) -> Template {
    let mut pieces = Vec::new();
    let mut rest = level;
    while let Some(at) = rest.find(IDENTITY) {
        let (before, after) = rest.split_at(at);
        if !before.is_empty() {
            pieces.push(Piece::Text(before.into()));
        }
        pieces.push(Piece::Identity);
        rest = after.get(IDENTITY.len()..).unwrap_or("");
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.into()));
    }
    Template(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trie(filters: &[&str]) -> Node {
        let mut n = Node::default();
        for (i, f) in filters.iter().enumerate() {
            crate::config::check_filter(f).unwrap_or_else(|e| panic!("{f}: {e}"));
            n.insert(f, RuleRef(i as u32));
        }
        n
    }

    fn matching(n: &Node, topic: &str, identity: &str) -> Vec<u32> {
        let mut v = Vec::new();
        n.matches(topic, identity, &mut |r| v.push(r.0));
        v.sort_unstable();
        v.dedup();
        v
    }

    fn covering(n: &Node, filter: &str, identity: &str) -> Vec<u32> {
        let mut v = Vec::new();
        n.covers(filter, identity, &mut |r| v.push(r.0));
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn mqtt_wildcard_semantics() {
        let n = trie(&[
            "sport/tennis/+",
            "sport/#",
            "+/+",
            "#",
            "+",
            "/finance",
            "$SYS/#",
        ]);
        assert_eq!(matching(&n, "sport/tennis/player1", ""), [0, 1, 3]);
        assert_eq!(matching(&n, "sport/tennis", ""), [1, 2, 3]);
        // `#` also matches the parent level; `+/+` matches "/finance" (empty first level).
        assert_eq!(matching(&n, "sport", ""), [1, 3, 4]);
        assert_eq!(matching(&n, "/finance", ""), [2, 3, 5]);
        // `sport/tennis/+` does not match `sport/tennis/player1/ranking`.
        assert_eq!(matching(&n, "sport/tennis/player1/ranking", ""), [1, 3]);
        // Leading wildcards never match `$` topics.
        assert_eq!(matching(&n, "$SYS/broker/load", ""), [6]);
        assert_eq!(matching(&n, "$SYS", ""), [6]);
        // Empty levels are levels.
        assert_eq!(matching(&n, "sport/", ""), [1, 2, 3]);
    }

    #[test]
    fn identity_templates() {
        let n = trie(&[
            "plant1/line1/{identity}/telemetry/#",
            "dev-{identity}-x/cmd",
        ]);
        assert_eq!(matching(&n, "plant1/line1/s-7/telemetry", "s-7"), [0]);
        assert_eq!(matching(&n, "plant1/line1/s-7/telemetry/temp", "s-7"), [0]);
        assert!(matching(&n, "plant1/line1/s-8/telemetry", "s-7").is_empty());
        assert!(matching(&n, "plant1/line1/s-7x/telemetry", "s-7").is_empty());
        assert_eq!(matching(&n, "dev-s-7-x/cmd", "s-7"), [1]);
        // An identity with '/' would span levels (and one device's topics could lie inside
        // another's): it never matches a template.
        let spiffe = "spiffe://plant1/line1/s-7";
        assert!(
            matching(
                &n,
                "plant1/line1/spiffe://plant1/line1/s-7/telemetry",
                spiffe
            )
            .is_empty()
        );
        let mut v = Vec::new();
        n.covers(
            "plant1/line1/spiffe://plant1/line1/s-7/telemetry/#",
            spiffe,
            &mut |r| v.push(r),
        );
        assert!(v.is_empty());
        // Identities with wildcards or empty never match a template.
        assert!(matching(&n, "plant1/line1/+/telemetry", "+").is_empty());
        assert!(matching(&n, "plant1/line1//telemetry", "").is_empty());
    }

    #[test]
    fn subscription_coverage() {
        let n = trie(&[
            "plant1/+/status",
            "plant1/line1/#",
            "{identity}/cmd/+",
            "#",
            "$SYS/broker/+",
        ]);
        assert_eq!(covering(&n, "plant1/line2/status", "x"), [0, 3]);
        assert_eq!(covering(&n, "plant1/+/status", "x"), [0, 3]);
        assert_eq!(covering(&n, "plant1/line1/+/temp", "x"), [1, 3]);
        assert_eq!(covering(&n, "plant1/line1/#", "x"), [1, 3]);
        // `plant1/#` is wider than `plant1/line1/#` and `plant1/+/status`.
        assert_eq!(covering(&n, "plant1/#", "x"), [3]);
        assert_eq!(covering(&n, "s-7/cmd/+", "s-7"), [2, 3]);
        assert_eq!(covering(&n, "s-7/cmd/#", "s-7"), [3]);
        assert_eq!(covering(&n, "s-8/cmd/reset", "s-7"), [3]);
        // `#` in a rule covers `#`, `+/…`, but not `$…` subscriptions.
        assert_eq!(covering(&n, "#", "x"), [3]);
        assert_eq!(covering(&n, "$SYS/broker/load", "x"), [4]);
        assert!(covering(&n, "$SYS/#", "x").is_empty());

        let narrow = trie(&["a/+/c"]);
        assert!(covering(&narrow, "a/#", "x").is_empty());
        assert!(covering(&narrow, "+/b/c", "x").is_empty());
        assert_eq!(covering(&narrow, "a/+/c", "x"), [0]);
    }
}
