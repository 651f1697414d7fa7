//! Users: the rules for usernames and passwords.

use std::fmt;

use crate::InvalidField;

/// The shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// The longest password accepted; bounds the work of hashing.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A valid username: `[a-z0-9][a-z0-9._@-]*`, at most 64 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Username(String);

impl Username {
    pub fn parse(name: &str) -> Result<Username, InvalidField> {
        check_name("username", name, "._@-")?;
        Ok(Username(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a new password against the length rules.
pub fn check_password(field: &str, password: &str) -> Result<(), InvalidField> {
    let n_chars = password.chars().count();
    if n_chars < MIN_PASSWORD_LEN {
        return Err(InvalidField::new(
            field,
            format!("must have at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(InvalidField::new(
            field,
            format!("must be at most {MAX_PASSWORD_LEN} bytes"),
        ));
    }
    Ok(())
}

/// Checks an identifier: a lowercase letter or digit, then lowercase letters, digits and the
/// given punctuation, 64 characters at most. Shared by every named thing.
pub(crate) fn check_name(field: &str, name: &str, punctuation: &str) -> Result<(), InvalidField> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let Some(first) = name.chars().next() else {
        return Err(InvalidField::new(field, "must not be empty"));
    };
    if 64 < name.len() {
        return Err(InvalidField::new(field, "must be at most 64 characters"));
    }
    if !allowed(first) {
        return Err(InvalidField::new(
            field,
            "must start with a lowercase letter or a digit",
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !allowed(c) && !punctuation.contains(c))
    {
        return Err(InvalidField::new(
            field,
            format!(
                "{bad:?} is not allowed: use lowercase letters, digits and any of {punctuation:?}"
            ),
        ));
    }
    Ok(())
}
