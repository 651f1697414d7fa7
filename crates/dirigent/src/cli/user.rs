//! `dirigent user ls | show | create | update | rm | logout-everywhere | passwd` and
//! `dirigent role ls | create | rm`.

use std::io::BufRead;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dirigent_proto::auth::{
    ChangePassword, CreateUser, PermissionSpec, RoleSpec, UpdateUser, User,
};

use crate::cli::{ClientArgs, explain, print_json, print_table};

#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// List the users.
    Ls(ClientArgs),
    /// Show one user.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a user; the password is asked for, or read from standard input.
    Create {
        name: String,
        /// A role to hold (repeatable): admin, operator, developer, viewer or a custom one.
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a user's roles, disable or enable them, or reset their password.
    Update(UpdateArgs),
    /// Delete a user with their sessions and API tokens.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End every session of a user (yours, or anyone's as an administrator).
    LogoutEverywhere {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change your own password (current and new asked for, or two lines on standard input).
    Passwd {
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct UpdateArgs {
    name: String,
    /// The roles to hold from now on (repeatable; replaces the current ones).
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Hold no role at all.
    #[arg(long, conflicts_with = "roles")]
    no_roles: bool,
    #[arg(long, conflicts_with = "enable")]
    disable: bool,
    #[arg(long)]
    enable: bool,
    /// Set a new password (asked for, or read from standard input with --password-stdin).
    #[arg(long)]
    reset_password: bool,
    #[arg(long, requires = "reset_password")]
    password_stdin: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum RoleCommand {
    /// List the built-in and custom roles with their permissions.
    Ls(ClientArgs),
    /// Define a custom role: `--permission robots:read,run:finance-*` (resource:actions[:pattern]).
    Create {
        name: String,
        #[arg(
            long = "permission",
            value_name = "RESOURCE:ACTIONS[:PATTERN]",
            required = true
        )]
        permissions: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a custom role.
    Rm {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(crate) async fn run_user(command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Ls(client) => {
            let users = client.client()?.users().await.map_err(explain)?;
            if client.json {
                return print_json(&users);
            }
            let rows: Vec<Vec<String>> = users.iter().map(user_row).collect();
            print_table(&["USER", "ROLES", "STATE", "CREATED"], &rows);
            Ok(())
        }
        UserCommand::Show { name, client } => {
            let user = client.client()?.user(&name).await.map_err(explain)?;
            report(&client, &user)
        }
        UserCommand::Create {
            name,
            roles,
            password_stdin,
            client,
        } => {
            let password = read_secret("Password for the new user: ", password_stdin)?;
            let user = client
                .client()?
                .create_user(&CreateUser {
                    username: name,
                    password,
                    roles,
                })
                .await
                .map_err(explain)?;
            report(&client, &user)
        }
        UserCommand::Update(args) => {
            let password = if args.reset_password {
                Some(read_secret("New password: ", args.password_stdin)?)
            } else {
                None
            };
            let roles = if args.no_roles {
                Some(Vec::new())
            } else {
                (!args.roles.is_empty()).then_some(args.roles)
            };
            let disabled = if args.disable {
                Some(true)
            } else if args.enable {
                Some(false)
            } else {
                None
            };
            if roles.is_none() && disabled.is_none() && password.is_none() {
                bail!(
                    "nothing to change: give --role, --no-roles, --disable, --enable or --reset-password"
                );
            }
            let user = args
                .client
                .client()?
                .update_user(
                    &args.name,
                    &UpdateUser {
                        roles,
                        disabled,
                        password,
                    },
                )
                .await
                .map_err(explain)?;
            report(&args.client, &user)
        }
        UserCommand::Rm { name, client } => {
            client.client()?.delete_user(&name).await.map_err(explain)?;
            eprintln!("Deleted user {name}.");
            Ok(())
        }
        UserCommand::LogoutEverywhere { name, client } => {
            client.client()?.logout_user(&name).await.map_err(explain)?;
            eprintln!("Every session of {name} has ended.");
            Ok(())
        }
        UserCommand::Passwd {
            password_stdin,
            client,
        } => {
            let current_password = read_secret("Current password: ", password_stdin)?;
            let new_password = read_secret("New password: ", password_stdin)?;
            client
                .client()?
                .change_password(&ChangePassword {
                    current_password,
                    new_password,
                })
                .await
                .map_err(explain)?;
            eprintln!("Password changed; your other sessions have ended.");
            Ok(())
        }
    }
}

pub(crate) async fn run_role(command: RoleCommand) -> anyhow::Result<()> {
    match command {
        RoleCommand::Ls(client) => {
            let roles = client.client()?.roles().await.map_err(explain)?;
            if client.json {
                return print_json(&roles);
            }
            let rows: Vec<Vec<String>> = roles
                .iter()
                .map(|role| {
                    let permissions: Vec<String> = role
                        .permissions
                        .iter()
                        .map(|p| {
                            format!(
                                "{}:{}:{}",
                                p.resource,
                                p.actions.join(","),
                                p.pattern.as_deref().unwrap_or("*")
                            )
                        })
                        .collect();
                    vec![
                        role.name.clone(),
                        if role.builtin { "built-in" } else { "custom" }.to_owned(),
                        permissions.join(" "),
                    ]
                })
                .collect();
            print_table(&["ROLE", "KIND", "PERMISSIONS"], &rows);
            Ok(())
        }
        RoleCommand::Create {
            name,
            permissions,
            description,
            client,
        } => {
            let permissions = permissions
                .iter()
                .map(|text| parse_permission(text))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let role = client
                .client()?
                .create_role(&RoleSpec {
                    name,
                    description,
                    permissions,
                    builtin: false,
                })
                .await
                .map_err(explain)?;
            if client.json {
                return print_json(&role);
            }
            eprintln!("Created role {}.", role.name);
            Ok(())
        }
        RoleCommand::Rm { name, client } => {
            client.client()?.delete_role(&name).await.map_err(explain)?;
            eprintln!("Deleted role {name}.");
            Ok(())
        }
    }
}

/// `resource:action,action[:pattern]`.
pub(crate) fn parse_permission(text: &str) -> anyhow::Result<PermissionSpec> {
    let mut parts = text.splitn(3, ':');
    let (Some(resource), Some(actions)) = (parts.next(), parts.next()) else {
        bail!(
            "--permission takes RESOURCE:ACTIONS[:PATTERN], such as robots:read,run:finance-*, not {text:?}"
        );
    };
    Ok(PermissionSpec {
        resource: resource.to_owned(),
        actions: actions.split(',').map(str::to_owned).collect(),
        pattern: parts.next().map(str::to_owned),
    })
}

fn report(client: &ClientArgs, user: &User) -> anyhow::Result<()> {
    if client.json {
        return print_json(user);
    }
    print_table(&["USER", "ROLES", "STATE", "CREATED"], &[user_row(user)]);
    Ok(())
}

fn user_row(user: &User) -> Vec<String> {
    vec![
        user.username.clone(),
        user.roles.join(","),
        if user.disabled { "disabled" } else { "enabled" }.to_owned(),
        user.created_at.to_string(),
    ]
}

/// A secret from a prompt without echo, or a line of standard input.
fn read_secret(prompt: &str, from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading standard input")?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    rpassword::prompt_password(prompt)
        .context("reading the password (use --password-stdin without a terminal)")
}
