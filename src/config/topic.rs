//! The topic filters of `[rule.mqtt]` as written: MQTT filter syntax plus the `{identity}`
//! placeholder. Matching is the policy's job (`policy::topics`).

/// The placeholder a filter may use: the client's certificate identity, substituted per session.
pub const IDENTITY: &str = "{identity}";

/// Checks a rule's filter as written: a valid MQTT topic filter once `{identity}` is
/// substituted, and no other `{placeholder}`. The message says what is wrong.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("empty topic filter".to_string());
    }
    if filter.len() > 65_535 {
        return Err("topic filter longer than 65535 bytes".to_string());
    }
    if filter.contains('\0') {
        return Err("topic filter contains NUL".to_string());
    }
    if filter.starts_with("$share/") {
        return Err(
            "shared-subscription prefix in a rule: write the filter itself ($share/<group>/ is stripped before matching)"
                .to_string(),
        );
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("'#' must be a whole level and the last one".to_string());
        }
        if level.contains('+') && *level != "+" {
            return Err("'+' must be a whole level".to_string());
        }
        let without = level.replace(IDENTITY, "");
        if let Some(open) = without.find('{')
            && let Some(len) = without.get(open..).and_then(|s| s.find('}'))
        {
            let name = without.get(open..=open + len).unwrap_or("{…}");
            if name.len() > 2
                && name
                    .trim_matches(['{', '}'])
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!(
                    "unknown placeholder {name} (the only one is {IDENTITY})"
                ));
            }
        }
    }
    Ok(())
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
            ("", "empty"),
            ("a/#/b", "'#'"),
            ("a#", "'#'"),
            ("a+/b", "'+'"),
            ("$share/g/a", "shared"),
            ("plant/{device}/x", "unknown placeholder {device}"),
            ("a\0b", "NUL"),
        ] {
            let e = check_filter(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
