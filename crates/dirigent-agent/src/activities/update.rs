//! `agent.update`: a new agent binary, downloaded from the orchestrator, checked against its
//! SHA-256, tried (it must run here and say its version) before it replaces the running one;
//! then the agent restarts into it. Whatever fails first leaves the agent as it was; the
//! binary it replaced is kept as `DATA/dirigent.previous`.

use std::{
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use dirigent_proto::activity::Updated;

use super::ops::blocking;
use crate::sha256_hex;

/// How long the new binary gets to say its version.
const TRY_FOR: Duration = Duration::from_secs(10);

/// Where the agent downloads uploaded files: its orchestrator, with its own credential.
#[derive(Debug, Clone)]
pub struct BlobSource {
    pub server_urls: Vec<String>,
    pub credential: String,
    pub trust: dirigent_client::Trust,
}

impl BlobSource {
    /// The file with this SHA-256, from the first node that has it.
    pub(super) async fn fetch(&self, sha256: &str) -> Result<Vec<u8>, String> {
        let mut reasons = Vec::new();
        for url in &self.server_urls {
            let client = dirigent_client::Client::with_trust(
                url,
                Some(self.credential.clone()),
                &self.trust,
            )
            .map_err(|err| err.to_string())?;
            match client.agent_blob(&sha256.to_ascii_lowercase()).await {
                Ok(content) => return Ok(content),
                Err(err) => reasons.push(format!("{url}: {err}")),
            }
        }
        Err(format!(
            "downloading the new binary: {}",
            reasons.join("; ")
        ))
    }
}

/// Checks, tries and swaps in `binary` for the running program; answers what changed.
pub(super) async fn swap_in(
    binary: Vec<u8>,
    sha256: String,
    data_dir: PathBuf,
) -> Result<Updated, String> {
    let digest = sha256_hex(&binary);
    if !digest.eq_ignore_ascii_case(&sha256) {
        return Err(format!(
            "the download's SHA-256 is {digest}, not {sha256}: the agent stays as it was"
        ));
    }
    let running = running_program()?;
    let dir = running
        .parent()
        .ok_or("the agent's program has no directory")?;
    let name = running
        .file_name()
        .ok_or("the agent's program has no name")?
        .to_string_lossy();
    let candidate = dir.join(format!(".{name}.update-{}", std::process::id()));
    let written = blocking({
        let candidate = candidate.clone();
        move || write_executable(&candidate, &binary)
    });
    let tried = match written.await {
        Ok(()) => version_of(&candidate).await,
        Err(reason) => Err(reason),
    };
    let version = match tried {
        Ok(version) => version,
        Err(reason) => {
            let _ = std::fs::remove_file(&candidate);
            return Err(format!("{reason}: the agent stays as it was"));
        }
    };
    blocking(move || {
        let previous = std::fs::read(&running)
            .map_err(|err| format!("reading {}: {err}", running.display()))?;
        write_executable(&data_dir.join("dirigent.previous"), &previous)?;
        std::fs::rename(&candidate, &running).map_err(|err| {
            let _ = std::fs::remove_file(&candidate);
            format!(
                "putting the new binary in place of {}: {err}",
                running.display()
            )
        })?;
        Ok(Updated {
            previous_sha256: sha256_hex(&previous),
            sha256: digest,
            version,
        })
    })
    .await
}

/// The agent's program, as the next start will run it.
pub(crate) fn running_program() -> Result<PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|err| format!("finding the agent's program: {err}"))?;
    // Replaced under it (a package upgrade), the link names the old file as deleted.
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

fn write_executable(path: &Path, content: &[u8]) -> Result<(), String> {
    let shown = |err: std::io::Error| format!("writing {}: {err}", path.display());
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .map_err(shown)?;
    file.write_all(content).map_err(shown)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o755))
        .map_err(shown)?;
    file.sync_all().map_err(shown)
}

/// Runs `program --version`: it must run on this machine and say it is Dirigent.
async fn version_of(program: &Path) -> Result<String, String> {
    let run = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TRY_FOR, run)
        .await
        .map_err(|_| {
            format!(
                "the new binary did not say its version within {} s",
                TRY_FOR.as_secs()
            )
        })?
        .map_err(|err| format!("the new binary does not run here: {err}"))?;
    let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    match (output.status.success(), said.starts_with("dirigent ")) {
        (true, true) => Ok(said),
        _ => Err(format!(
            "the new binary is not a working dirigent (`--version` said {said:?}, {})",
            output.status
        )),
    }
}
