//! Identifier rules. Ids end up inside store keys, so an id can never carry a `/`.

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Checks that `value` is a valid id: 1–128 characters from `[A-Za-z0-9._-]`.
/// `what` names the field in the error ("agent_id", "function_id"…).
pub fn check_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is required"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!(
            "{what} is {} characters long; at most {MAX_ID_LEN} are allowed",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{what} {value:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(check_id("agent_id", "node-1.eu_west").is_ok());
        assert_eq!(
            check_id("agent_id", "").unwrap_err(),
            "agent_id is required"
        );
        assert!(check_id("agent_id", "a/b").unwrap_err().contains("'/'"));
        assert!(check_id("agent_id", &"x".repeat(129)).is_err());
        assert!(check_id("agent_id", &"x".repeat(128)).is_ok());
    }
}
