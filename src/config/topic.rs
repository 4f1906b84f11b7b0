//! The topic filters of `[rule.mqtt]` as written: MQTT filter syntax plus the `{identity}`
//! placeholder. Matching is the policy's job (`policy::topics`).

/// The placeholder a filter may use: the client's certificate identity, substituted per session.
pub const IDENTITY: &str = "{identity}";

/// Checks a rule's filter as written: a valid MQTT topic filter once `{identity}` is
/// substituted (the codec's own check), and no other `{placeholder}`.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.starts_with("$share/") {
        return Err(
            "shared-subscription prefix in a rule: write the filter itself ($share/<group>/ is stripped before matching)"
                .to_string(),
        );
    }
    if let Some(name) = unknown_placeholder(filter) {
        return Err(format!(
            "unknown placeholder {name} (the only one is {IDENTITY})"
        ));
    }
    if !crate::protocol::mqtt::valid_topic_filter(&filter.replace(IDENTITY, "x")) {
        return Err(
            "not a valid MQTT topic filter: 1 to 65535 bytes, no NUL, '+' a whole level, '#' a whole level and the last one"
                .to_string(),
        );
    }
    Ok(())
}

/// A `{word}` other than `{identity}`: most likely a misspelt placeholder. Other braces
/// (`{"k":1}`) are literal topic text.
fn unknown_placeholder(filter: &str) -> Option<&str> {
    let mut rest = filter;
    while let Some(open) = rest.find('{') {
        let tail = rest.get(open..)?;
        let close = tail.find('}')?;
        let name = tail.get(..=close)?;
        let word = name.trim_matches(['{', '}']);
        if name != IDENTITY
            && !word.is_empty()
            && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Some(name);
        }
        rest = tail.get(1..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        for ok in [
            "a/b",
            "#",
            "+/x/#",
            "plant/{identity}/#",
            "x{identity}y",
            "json/{\"k\":1}",
        ] {
            assert!(check_filter(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "not a valid"),
            ("a/#/b", "not a valid"),
            ("a#", "not a valid"),
            ("a+/b", "not a valid"),
            ("$share/g/a", "shared"),
            ("plant/{device}/x", "unknown placeholder {device}"),
            ("a\0b", "not a valid"),
            ("{identity}/+x", "not a valid"),
        ] {
            let e = check_filter(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
