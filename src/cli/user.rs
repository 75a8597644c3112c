//! `croupier user add|passwd|remove|list` and `croupier token create|revoke|list`: the console's
//! people and scripts (admin certificate). A password is read from the terminal without echo,
//! or from stdin with `--password-stdin`; a token's secret is printed once.

use super::*;
use crate::output::{clean, table, time};
use clap::Subcommand;
use croupier_proto::control::v1 as pb;
use std::io::IsTerminal;

/// `croupier user …`.
#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a console user (refused when the name exists).
    Add(UserArgs),
    /// Set a user's password (and, when given, role and scopes); their sessions end.
    Passwd(UserArgs),
    /// Remove a user; their sessions end.
    Remove {
        /// User name.
        name: String,
        /// JSON output: {"name", "deleted"}.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// List users.
    List {
        /// JSON output: {"users": [...]}.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
}

/// A user's name, role, scopes and password source.
#[derive(Args, Debug)]
pub struct UserArgs {
    /// User name ([A-Za-z0-9._-]); the identity is spiffe://croupier/ROLE/NAME.
    pub name: String,
    /// Role, as a certificate's: client or admin (`passwd` keeps the current one unless given).
    #[arg(long)]
    pub role: Option<String>,
    /// Scope GAME/ENV or GAME/* (repeatable); none: unscoped.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// Read the password from stdin (one line) instead of the terminal.
    #[arg(long)]
    pub password_stdin: bool,
    /// JSON output: the user as stored.
    #[arg(long)]
    pub json: bool,
    /// Connection (identity defaults to the admin certificate).
    #[command(flatten)]
    pub conn: Conn,
}

/// `croupier token …`.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create an API token for scripts: `Authorization: Bearer <token>` on the console's API.
    Create {
        /// A label saying what it is for; the identity's name.
        name: String,
        /// Role: client or admin.
        #[arg(long, default_value = "client")]
        role: String,
        /// Scope GAME/ENV or GAME/* (repeatable); none: unscoped.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime: 30d, 12h… (60 s to 365 days).
        #[arg(long, default_value = "30d", value_parser = super::parse_duration)]
        ttl: std::time::Duration,
        /// JSON output: {"token": {...}, "secret"}.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token's id (`croupier token list`).
        id: String,
        /// JSON output: {"id", "revoked"}.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
    /// List tokens (never their secrets).
    List {
        /// JSON output: {"tokens": [...]}.
        #[arg(long)]
        json: bool,
        /// Connection (identity defaults to the admin certificate).
        #[command(flatten)]
        conn: Conn,
    },
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        if first != again {
            return Err(exit::usage("the two passwords differ"));
        }
        first
    };
    Ok(password)
}

type Control = croupier_proto::control::v1::control_service_client::ControlServiceClient<
    tonic::transport::Channel,
>;

/// The control service as the admin certificate (unless `--identity` names another).
async fn admin(conn: &Conn) -> anyhow::Result<Control> {
    Ok(conn.client("admin-admin").await?.control_service())
}

/// Prints `items` as `{"<key>": [...]}` with `--json`, else as a table.
fn print_list<T>(
    json: bool,
    key: &str,
    items: &[T],
    to_json: fn(&T) -> serde_json::Value,
    headers: &[&str],
    row: fn(&T) -> Vec<String>,
) {
    if json {
        let items: Vec<_> = items.iter().map(to_json).collect();
        println!("{}", serde_json::json!({ key: items }));
    } else {
        let rows: Vec<_> = items.iter().map(row).collect();
        print!("{}", table(headers, &rows));
    }
}

fn user_json(u: &pb::User) -> serde_json::Value {
    serde_json::json!({
        "name": u.name, "role": u.role, "scopes": u.scopes, "created_at_ms": u.created_at_ms,
        "password_set_at_ms": u.password_set_at_ms, "changed_by": u.changed_by,
    })
}

fn token_json(t: &pb::ApiToken) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "name": t.name, "role": t.role, "scopes": t.scopes,
        "created_at_ms": t.created_at_ms, "expires_at_ms": t.expires_at_ms,
        "created_by": t.created_by,
    })
}

async fn put_user(args: UserArgs, create_only: bool) -> anyhow::Result<()> {
    let mut control = admin(&args.conn).await?;
    let role = match (&args.role, create_only) {
        (Some(r), _) => r.clone(),
        (None, true) => "client".into(),
        (None, false) => {
            let users = control
                .list_users(pb::ListUsersRequest {})
                .await
                .map_err(|s| status_error(&s))?
                .into_inner()
                .users;
            let user = users.into_iter().find(|u| u.name == args.name);
            let user = user.ok_or_else(|| {
                exit::usage(format!(
                    "no user {:?}; add it with `croupier user add`",
                    args.name
                ))
            })?;
            if args.scopes.is_empty() {
                return put(&mut control, &args, user.role, user.scopes, create_only).await;
            }
            user.role
        }
    };
    let scopes = args.scopes.clone();
    put(&mut control, &args, role, scopes, create_only).await
}

async fn put(
    control: &mut Control,
    args: &UserArgs,
    role: String,
    scopes: Vec<String>,
    create_only: bool,
) -> anyhow::Result<()> {
    let password = read_password(args.password_stdin)?;
    let resp = control
        .put_user(pb::PutUserRequest {
            name: args.name.clone(),
            role,
            scopes,
            password,
            create_only,
        })
        .await
        .map_err(|s| status_error(&s))?
        .into_inner();
    let user = resp.user.unwrap_or_default();
    if args.json {
        println!("{}", user_json(&user));
    } else {
        println!(
            "user {} {} ({}, {})",
            clean(&user.name),
            if resp.created { "added" } else { "updated" },
            user.role,
            if user.scopes.is_empty() {
                "unscoped".to_string()
            } else {
                user.scopes.join(", ")
            }
        );
    }
    Ok(())
}

/// Runs a `croupier user` command.
pub async fn run_user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add(args) => put_user(args, true).await,
        UserCommand::Passwd(args) => put_user(args, false).await,
        UserCommand::Remove { name, json, conn } => {
            let mut control = admin(&conn).await?;
            let deleted = control
                .delete_user(pb::DeleteUserRequest { name: name.clone() })
                .await
                .map_err(|s| status_error(&s))?
                .into_inner()
                .deleted;
            if json {
                println!("{}", serde_json::json!({"name": name, "deleted": deleted}));
            } else if deleted {
                println!("user {} removed", clean(&name));
            } else {
                println!("no user {}", clean(&name));
            }
            Ok(())
        }
        UserCommand::List { json, conn } => {
            let mut control = admin(&conn).await?;
            let users = control
                .list_users(pb::ListUsersRequest {})
                .await
                .map_err(|s| status_error(&s))?
                .into_inner()
                .users;
            print_list(
                json,
                "users",
                &users,
                user_json,
                &["NAME", "ROLE", "SCOPES", "PASSWORD SET", "BY"],
                |u| {
                    vec![
                        clean(&u.name),
                        u.role.clone(),
                        u.scopes.join(","),
                        time(u.password_set_at_ms),
                        clean(&u.changed_by),
                    ]
                },
            );
            Ok(())
        }
    }
}

/// Runs a `croupier token` command.
pub async fn run_token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            name,
            role,
            scopes,
            ttl,
            json,
            conn,
        } => {
            let mut control = admin(&conn).await?;
            let resp = control
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    scopes,
                    ttl_seconds: ttl.as_secs() as i64,
                })
                .await
                .map_err(|s| status_error(&s))?
                .into_inner();
            let token = resp.token.unwrap_or_default();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"token": token_json(&token), "secret": resp.secret})
                );
            } else {
                println!(
                    "token {} for {} ({}), expires {}\n{}\n(shown once: store it now)",
                    token.id,
                    clean(&token.name),
                    token.role,
                    time(token.expires_at_ms),
                    resp.secret
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id, json, conn } => {
            let mut control = admin(&conn).await?;
            let revoked = control
                .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(|s| status_error(&s))?
                .into_inner()
                .revoked;
            if json {
                println!("{}", serde_json::json!({"id": id, "revoked": revoked}));
            } else if revoked {
                println!("token {} revoked", clean(&id));
            } else {
                println!("no token {}", clean(&id));
            }
            Ok(())
        }
        TokenCommand::List { json, conn } => {
            let mut control = admin(&conn).await?;
            let tokens = control
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(|s| status_error(&s))?
                .into_inner()
                .tokens;
            print_list(
                json,
                "tokens",
                &tokens,
                token_json,
                &["ID", "NAME", "ROLE", "SCOPES", "EXPIRES", "BY"],
                |t| {
                    vec![
                        t.id.clone(),
                        clean(&t.name),
                        t.role.clone(),
                        t.scopes.join(","),
                        time(t.expires_at_ms),
                        clean(&t.created_by),
                    ]
                },
            );
            Ok(())
        }
    }
}
