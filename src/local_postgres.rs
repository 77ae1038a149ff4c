//! The service's own PostgreSQL cluster, for a machine without a database server: with no
//! `DATABASE_URL` and nothing answering on the default address, the service initialises a
//! private cluster under its data directory (once), starts it on its own port with the
//! PostgreSQL server programs found on the machine, uses it, and stops it on shutdown.
//!
//! The cluster listens on 127.0.0.1 only and asks for a password (generated at
//! initialisation, kept in the data directory, mode 0600): another local user reaches
//! neither its files nor its database. PostgreSQL refuses to run as root, so a service
//! started by root runs the cluster as the `postgres` system user instead (the one the
//! server packages create), in a directory that user owns.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context as _;

/// The programs the cluster needs.
const PROGRAMS: [&str; 2] = ["initdb", "pg_ctl"];
/// The user and database the service uses in its cluster.
const USER: &str = "wallet";
const DATABASE: &str = "wallet";
/// Files the service keeps in the cluster's directory beside PostgreSQL's own.
const PORT_FILE: &str = "wallet-port";
const PASSWORD_FILE: &str = "wallet-password";

/// A running cluster of the service's own. Stopped when dropped, if this process started
/// it (another process of the service may be using one it found running).
pub struct LocalCluster {
    data: PathBuf,
    bin: PathBuf,
    owner: Option<Owner>,
    port: u16,
    password: String,
    started_here: bool,
}

/// The system user the cluster runs as when the service runs as root.
#[derive(Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

impl LocalCluster {
    /// Starts (initialising it the first time) the cluster in `dir`, with the server
    /// programs of `bin` (or the first directory holding them, see [`find_programs`]).
    pub fn start(dir: &Path, bin: Option<&Path>) -> anyhow::Result<Self> {
        let bin = find_programs(bin)?;
        let owner = owner_when_root()?;
        let data = dir.join("postgres");
        // The port file is written last: without it the cluster is unfinished (a first
        // start was interrupted) and is made again.
        let mut cluster = if data.join("PG_VERSION").exists() && data.join(PORT_FILE).exists() {
            let port = read_file(&data.join(PORT_FILE))?
                .parse()
                .with_context(|| format!("{} is not a port", data.join(PORT_FILE).display()))?;
            let password = read_file(&data.join(PASSWORD_FILE))?;
            LocalCluster {
                data,
                bin,
                owner,
                port,
                password,
                started_here: false,
            }
        } else {
            initialise(dir, data, bin, owner)?
        };
        if cluster.pg_ctl(&["status"])?.status.success() {
            tracing::info!(data = %cluster.data.display(), "the service's PostgreSQL cluster is already running");
        } else {
            let log = cluster.data.join("server.log");
            let log = log.to_string_lossy().into_owned();
            let output = cluster.pg_ctl(&["start", "--wait", "--timeout=60", "--log", &log])?;
            if !output.status.success() {
                anyhow::bail!(
                    "starting the service's PostgreSQL cluster in {} failed: {}(its log: {log})",
                    cluster.data.display(),
                    both_outputs(&output)
                );
            }
            cluster.started_here = true;
        }
        Ok(cluster)
    }

    /// The URL of the service's database in the cluster (holding its password).
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// One line for the operator: where the cluster is and how to use another server.
    pub fn describe(&self) -> String {
        format!(
            "Database:  the service's own PostgreSQL cluster in {} (127.0.0.1:{}, programs \
             of {}); set DATABASE_URL to use another server",
            self.data.display(),
            self.port,
            self.bin.display()
        )
    }

    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        let data = self.data.to_string_lossy();
        let mut all = vec!["--pgdata", &data, "--silent"];
        all.extend_from_slice(args);
        run(&self.bin, "pg_ctl", &all, self.owner)
    }

    /// Stops the cluster if this process started it; waits for PostgreSQL to finish.
    pub fn stop(&mut self) {
        if !std::mem::take(&mut self.started_here) {
            return;
        }
        match self.pg_ctl(&["stop", "--mode=fast", "--wait"]) {
            Ok(output) if output.status.success() => {
                tracing::info!("stopped the service's PostgreSQL cluster")
            }
            Ok(output) => tracing::warn!(
                output = %both_outputs(&output),
                "stopping the service's PostgreSQL cluster failed"
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "stopping the service's PostgreSQL cluster failed")
            }
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The default place of the service's data (its cluster): `$XDG_DATA_HOME/wallet` or
/// `~/.local/share/wallet` (`~/Library/Application Support/wallet` on macOS); for root,
/// `/var/lib/wallet`, which the `postgres` user can reach.
pub fn default_data_dir() -> anyhow::Result<PathBuf> {
    if is_root() {
        return Ok(PathBuf::from("/var/lib/wallet"));
    }
    dirs::data_dir()
        .map(|d| d.join("wallet"))
        .context("no home directory for the service's data: set WALLET_DATA_DIR")
}

/// Whether something accepts TCP connections at `addr` within a second.
pub fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// The directory holding `initdb` and `pg_ctl`: `configured` when given; else the first
/// of PATH and the usual places of packaged servers (Debian's /usr/lib/postgresql/N/bin,
/// the newest first; Homebrew's; /usr/local/pgsql/bin).
fn find_programs(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let holds_all = |dir: &Path| PROGRAMS.iter().all(|p| dir.join(p).is_file());
    let candidates: Vec<PathBuf> = match configured {
        Some(dir) => vec![dir.to_owned()],
        None => {
            let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
                .map(|path| std::env::split_paths(&path).collect())
                .unwrap_or_default();
            // Debian's /usr/lib/postgresql/15, Homebrew's postgresql@16, PGDG's /usr/pgsql-16.
            for (root, prefix) in [
                ("/usr/lib/postgresql", ""),
                ("/opt/homebrew/opt", "postgresql"),
                ("/usr/local/opt", "postgresql"),
                ("/usr", "pgsql-"),
            ] {
                dirs.extend(versioned_bins(Path::new(root), prefix));
            }
            dirs.extend(
                ["/opt/homebrew/bin", "/usr/local/pgsql/bin"]
                    .iter()
                    .map(PathBuf::from),
            );
            dirs
        }
    };
    if let Some(dir) = candidates.into_iter().find(|d| holds_all(d)) {
        return Ok(dir);
    }
    let searched = match configured {
        Some(dir) => format!("WALLET_POSTGRES_BIN ({})", dir.display()),
        None => "PATH, /usr/lib/postgresql/*/bin, Homebrew's, /usr/pgsql-*/bin and \
                 /usr/local/pgsql/bin"
            .into(),
    };
    anyhow::bail!(
        "no PostgreSQL server answers at the default address and no PostgreSQL server \
         programs (initdb, pg_ctl) were found in {searched}.\n\
         Either install them and start again (the service then runs its own cluster):\n  \
         Debian/Ubuntu: sudo apt-get install postgresql\n  \
         Fedora/RHEL:   sudo dnf install postgresql-server\n  \
         macOS:         brew install postgresql@16\n  \
         (or set WALLET_POSTGRES_BIN to the directory holding initdb and pg_ctl)\n\
         or set DATABASE_URL to a server you run: \
         DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/wallet"
    )
}

/// `root/PREFIX*/bin` for versioned installations (`/usr/lib/postgresql/15/bin`,
/// `/opt/homebrew/opt/postgresql@16/bin`), the highest version first.
fn versioned_bins(root: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix(prefix)?;
            let version = version
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((version, e.path().join("bin")))
        })
        .collect();
    found.sort_by(|a, b| b.0.cmp(&a.0));
    found.into_iter().map(|(_, dir)| dir).collect()
}

/// Creates the cluster: a directory only its owner reads, a generated password, the
/// service's user with it, a free port of 127.0.0.1.
fn initialise(
    dir: &Path,
    data: PathBuf,
    bin: PathBuf,
    owner: Option<Owner>,
) -> anyhow::Result<LocalCluster> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A half-made cluster from an interrupted first start: made again from nothing.
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .with_context(|| format!("removing the unfinished {}", data.display()))?;
    }
    create_owned_dir(&data, owner)?;
    let password = {
        use rand::Rng as _;
        let bytes: [u8; 24] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    // The password reaches initdb in a file only the owner reads, never on a command line.
    let password_file = dir.join(".wallet-initdb-password");
    write_owned(&password_file, &password, owner)?;
    let port = free_port()?;
    let data_text = data.to_string_lossy().into_owned();
    let pwfile = format!("--pwfile={}", password_file.display());
    let output = run(
        &bin,
        "initdb",
        &[
            "--pgdata",
            &data_text,
            "--username",
            USER,
            &pwfile,
            "--auth-host=scram-sha-256",
            "--auth-local=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
        ],
        owner,
    );
    let _ = std::fs::remove_file(&password_file);
    let output = output?;
    if !output.status.success() {
        anyhow::bail!(
            "initialising the service's PostgreSQL cluster in {} failed: {}",
            data.display(),
            both_outputs(&output)
        );
    }
    // Only 127.0.0.1, on the port chosen now; the socket in the cluster's own directory.
    let conf = format!(
        "\n# The wallet service's own cluster.\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
         unix_socket_directories = '{}'\nmax_connections = 100\n",
        data_text.replace('\'', "''")
    );
    append(&data.join("postgresql.conf"), &conf)?;
    write_owned(&data.join(PASSWORD_FILE), &password, owner)?;
    // Written last: its presence with PG_VERSION says the cluster is complete.
    write_owned(&data.join(PORT_FILE), &port.to_string(), owner)?;
    tracing::info!(data = %data.display(), port, "initialised the service's PostgreSQL cluster");
    Ok(LocalCluster {
        data,
        bin,
        owner,
        port,
        password,
        started_here: false,
    })
}

/// A port of 127.0.0.1 nothing listens on now.
fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for PostgreSQL")?;
    Ok(listener.local_addr()?.port())
}

fn run(bin: &Path, program: &str, args: &[&str], owner: Option<Owner>) -> anyhow::Result<Output> {
    let mut command = Command::new(bin.join(program));
    command
        .args(args)
        .stdin(Stdio::null())
        // PostgreSQL's programs read these; the caller's would point them elsewhere.
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST");
    #[cfg(unix)]
    if let Some(owner) = owner {
        use std::os::unix::process::CommandExt as _;
        command.uid(owner.uid).gid(owner.gid).current_dir("/");
    }
    command
        .output()
        .with_context(|| format!("running {}", bin.join(program).display()))
}

fn both_outputs(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    let text = text.trim();
    if text.is_empty() {
        format!("{} ", output.status)
    } else {
        format!("{text} ")
    }
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

fn create_owned_dir(path: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .with_context(|| format!("creating {}", path.display()))?;
    chown(path, owner)
}

/// Writes a file only its owner reads.
fn write_owned(path: &Path, contents: &str, owner: Option<Owner>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    chown(path, owner)
}

fn chown(path: &Path, owner: Option<Owner>) -> anyhow::Result<()> {
    #[cfg(unix)]
    if let Some(owner) = owner {
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
            .with_context(|| format!("giving {} to the postgres user", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, owner);
    Ok(())
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// For root: the `postgres` system user (PostgreSQL refuses to run as root).
fn owner_when_root() -> anyhow::Result<Option<Owner>> {
    if !is_root() {
        return Ok(None);
    }
    let output = Command::new("getent")
        .args(["passwd", "postgres"])
        .output()
        .context("looking up the postgres user (getent passwd postgres)")?;
    let line = String::from_utf8_lossy(&output.stdout);
    let mut fields = line.trim().split(':').skip(2);
    match (
        fields.next().and_then(|f| f.parse().ok()),
        fields.next().and_then(|f| f.parse().ok()),
    ) {
        (Some(uid), Some(gid)) if output.status.success() => Ok(Some(Owner { uid, gid })),
        _ => anyhow::bail!(
            "the service runs as root and PostgreSQL refuses to: no `postgres` system user \
             to run its cluster as (the server packages create one). Run the service as \
             another user, or set DATABASE_URL to a server you run"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versioned_installations_are_tried_newest_first_and_only_with_their_prefix() {
        let root = std::env::temp_dir().join(format!("wallet-pg-bins-{}", std::process::id()));
        for name in ["9.6", "15", "13", "postgresql@16", "postgresql@14", "other"] {
            std::fs::create_dir_all(root.join(name).join("bin")).unwrap();
        }
        let names = |prefix| -> Vec<String> {
            versioned_bins(&root, prefix)
                .iter()
                .map(|d| {
                    d.parent()
                        .unwrap()
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        };
        assert_eq!(names("postgresql"), ["postgresql@16", "postgresql@14"]);
        let all = names("");
        assert_eq!(&all[..3], ["postgresql@16", "15", "postgresql@14"]);
        assert!(all.iter().position(|n| n == "13") < all.iter().position(|n| n == "9.6"));
        assert!(versioned_bins(&root.join("missing"), "").is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
