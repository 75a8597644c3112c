//! Unit tests of the invoker's pure parts.

use super::*;
use croupier_registry::identity::Role;

#[test]
fn parses_grpc_timeouts() {
    assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
    assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
    assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
    assert_eq!(parse_grpc_timeout("x"), None);
    assert_eq!(parse_grpc_timeout("10q"), None);
}

#[test]
fn authorizes_by_role_and_identity() {
    let d = DescriptorRecord {
        id: "player.ban".into(),
        allowed_roles: vec!["admin".into()],
        ..Default::default()
    };
    let admin = Identity::new(Role::Admin, "ops").unwrap();
    let client = Identity::new(Role::Client, "c1").unwrap();
    assert!(authorize(&admin, &d).is_ok());
    let err = authorize(&client, &d).unwrap_err().to_string();
    assert!(
        err.contains("spiffe://croupier/client/c1") && err.contains("player.ban"),
        "{err}"
    );
}
