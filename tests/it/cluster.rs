//! Throwaway PostgreSQL clusters on free loopback ports, for tests that need
//! an empty server, TLS only, another authentication method or WAL archiving.
//!
//! `initdb` runs once per test process into a template; each cluster is a copy
//! of it (much faster than another initdb). Its bootstrap superuser is
//! `strata_admin`, not `postgres`, like a managed or hand-made server where the
//! names differ. As root, the server runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::helpers::free_port;

/// The bootstrap superuser of every throwaway cluster.
pub const ADMIN: &str = "strata_admin";

pub fn bin_dir() -> PathBuf {
    let out = Command::new("bash")
        .args(["-c", "ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1"])
        .output()
        .expect("list PostgreSQL binaries");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

pub fn is_root() -> bool {
    // SAFETY-free check: root owns /proc/self when we are root.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs a PostgreSQL server program, as `postgres` when we are root.
pub fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Hands `path` (recursively) to the user the servers run as.
pub fn give_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A directory the server's user can use, removed at the end.
pub fn shared_dir(prefix: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The initdb'd template, made once per test process.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &TEMPLATE
        .get_or_init(|| {
            let dir = shared_dir("strata-pg-template-");
            let data = dir.path().join("data");
            give_to_postgres(dir.path());
            let out = pg_command(&bin_dir().join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    ADMIN,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            (dir, data)
        })
        .1
}

/// A certificate authority for tests, with server and client certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let pem = issuer.pem();
        Self { issuer, pem }
    }

    /// A certificate (PEM) and key (PEM) for `names` (DNS names or IPs), with
    /// `common_name` as subject (the user, for client certificates).
    pub fn issue(&self, common_name: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes the CA certificate to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).unwrap();
    }
}

/// How a cluster is set up.
#[derive(Default)]
pub struct Options {
    /// Serve TLS with a certificate for `localhost` from this CA, and trust
    /// client certificates it signed.
    pub tls: Option<&'static str>,
    /// `pg_hba.conf` lines, replacing the default (trust from loopback).
    pub hba: Vec<String>,
    /// Extra `postgresql.conf` settings.
    pub settings: Vec<String>,
    /// Environment of the server (and so of its `archive_command`).
    pub env: Vec<(String, String)>,
}

/// A running throwaway cluster; stopped and removed when dropped.
pub struct Cluster {
    pub port: u16,
    dir: tempfile::TempDir,
    data: PathBuf,
    pub ca: Option<TestCa>,
}

impl Cluster {
    /// Copies the template and starts it on a free port.
    pub fn start(opts: Options) -> Self {
        let dir = shared_dir("strata-pg-");
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(template())
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success(), "copying the template failed");
        let mut conf = vec![
            "fsync = off".to_owned(),
            "synchronous_commit = off".to_owned(),
            "full_page_writes = off".to_owned(),
            "max_connections = 50".to_owned(),
        ];
        conf.extend(opts.settings.iter().cloned());
        let mut hba = if opts.hba.is_empty() {
            vec![
                "local all all trust".to_owned(),
                "host all all 127.0.0.1/32 trust".to_owned(),
            ]
        } else {
            opts.hba.clone()
        };
        let ca = opts.tls.map(|name| {
            let ca = TestCa::new(name);
            let (cert, key) = ca.issue("localhost", &["localhost"]);
            std::fs::write(data.join("server.crt"), cert).unwrap();
            std::fs::write(data.join("server.key"), key).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            ca.write(&data.join("root.crt"));
            conf.extend([
                "ssl = on".to_owned(),
                "ssl_cert_file = 'server.crt'".to_owned(),
                "ssl_key_file = 'server.key'".to_owned(),
                "ssl_ca_file = 'root.crt'".to_owned(),
            ]);
            ca
        });
        if hba.iter().all(|l| !l.starts_with("local")) {
            hba.insert(0, "local all all trust".to_owned());
        }
        std::fs::write(data.join("pg_hba.conf"), hba.join("\n") + "\n").unwrap();
        let mut text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        text.push('\n');
        text.push_str(&conf.join("\n"));
        text.push('\n');
        std::fs::write(data.join("postgresql.conf"), text).unwrap();
        give_to_postgres(dir.path());
        Self::run(dir, data, &opts.env, ca)
    }

    /// Starts the data directory `data` inside `dir` (a restored one, say)
    /// on a free port.
    pub fn adopt(dir: tempfile::TempDir, data: PathBuf, env: &[(String, String)]) -> Self {
        give_to_postgres(dir.path());
        Self::run(dir, data, env, None)
    }

    fn run(
        dir: tempfile::TempDir,
        data: PathBuf,
        env: &[(String, String)],
        ca: Option<TestCa>,
    ) -> Self {
        let port = free_port();
        let out = pg_command(&bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                dir.path().display()
            ))
            .arg("start")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the cluster did not start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
        );
        Self {
            port,
            dir,
            data,
            ca,
        }
    }

    /// A URL for `user` and `db` over TCP on 127.0.0.1 (`extra` is appended
    /// as query parameters).
    pub fn url(&self, user: &str, db: &str, extra: &str) -> String {
        let q = if extra.is_empty() {
            String::new()
        } else {
            format!("?{extra}")
        };
        format!("postgres://{user}@127.0.0.1:{}/{db}{q}", self.port)
    }

    /// Restarts the server (fast shutdown), on the same port and settings.
    pub fn restart(&self) {
        let out = pg_command(&bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-m", "fast", "restart"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the cluster did not restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server at once (a crash, or a host that is gone).
    pub fn stop(&self) {
        let _ = pg_command(&bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }

    /// The data directory.
    pub fn data(&self) -> &Path {
        &self.data
    }

    /// Runs SQL as the bootstrap superuser over the Unix socket (which every
    /// set-up trusts), returning unaligned tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", ADMIN, "-d", db, "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql on the test cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// pg_dump of a database over the socket, owners and grants included,
    /// without pg_dump's random `\restrict` key.
    pub fn dump(&self, db: &str) -> String {
        dump_with(
            &[
                "-h",
                &self.dir.path().display().to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                ADMIN,
            ],
            db,
        )
    }
}

/// pg_dump with `connection` arguments, `\restrict` lines removed.
pub fn dump_with(connection: &[&str], db: &str) -> String {
    let out = Command::new(bin_dir().join("pg_dump"))
        .args(connection)
        .args(["-d", db])
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 dump")
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = pg_command(&bin_dir().join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}
