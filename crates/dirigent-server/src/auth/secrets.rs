//! Passwords and tokens: argon2id hashes, random tokens, and the SHA-256 digests under which
//! tokens are stored. The database never sees a secret.

use argon2::{
    Argon2,
    password_hash::{PasswordHasher, PasswordVerifier},
};
use sha2::{Digest, Sha256};

/// Prefix of login-session tokens.
pub const SESSION_PREFIX: &str = "dgs_";
/// Prefix of API tokens.
pub const API_TOKEN_PREFIX: &str = "dgt_";
/// Prefix of run tokens, given to a robot for the life of its run.
pub const RUN_TOKEN_PREFIX: &str = "dgr_";
/// Prefix of agent credentials.
pub const AGENT_CREDENTIAL_PREFIX: &str = "dga_";
/// Prefix of the lease tokens of claimed work items.
pub const LEASE_PREFIX: &str = "dgl_";
/// Prefix of enrollment tokens.
pub const ENROLLMENT_PREFIX: &str = "dge_";

/// Hashes a password with argon2id (m=19 MiB, t=2, p=1) and a random salt, as a PHC string.
/// CPU-heavy: call it from `spawn_blocking`.
pub fn hash_password(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|err| format!("hashing a password: {err}"))
}

/// Whether `password` matches the PHC string `hash`. CPU-heavy: call it from `spawn_blocking`.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A new random secret: `prefix` and 64 hex digits (256 bits).
pub fn new_token(prefix: &str) -> Result<String, getrandom::Error> {
    Ok(format!("{prefix}{}", random_hex::<32>()?))
}

/// A short random public identifier (64 bits), such as a token id.
pub fn new_id(prefix: &str) -> Result<String, getrandom::Error> {
    Ok(format!("{prefix}{}", random_hex::<8>()?))
}

/// A readable generated password: 24 characters from an unambiguous alphabet (~137 bits).
pub fn new_password() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)?;
    // 256 % 56 != 0, so plain modulo would bias; reject the top of the byte range instead.
    let mut password = String::with_capacity(bytes.len());
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let mut refill = [0u8; 1];
    for mut byte in bytes {
        while limit <= byte {
            getrandom::fill(&mut refill)?;
            byte = refill[0];
        }
        password.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
    }
    Ok(password)
}

/// The digest a token is stored and looked up under.
pub fn token_digest(token: &str) -> String {
    to_hex(&Sha256::digest(token.as_bytes()))
}

fn random_hex<const N: usize>() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(to_hex(&bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_verify_and_salt() {
        let hash = hash_password("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horse!", &hash));
        assert!(!verify_password("correct horse", "not a phc string"));
        assert_ne!(hash, hash_password("correct horse").unwrap());
    }

    #[test]
    fn tokens_are_random_and_digests_stable() {
        let token = new_token(API_TOKEN_PREFIX).unwrap();
        assert_eq!(token.len(), 4 + 64);
        assert_ne!(token, new_token(API_TOKEN_PREFIX).unwrap());
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let password = new_password().unwrap();
        assert_eq!(password.chars().count(), 24);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
