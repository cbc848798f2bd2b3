//! TLS to PostgreSQL and Redis against real servers: a private PostgreSQL with
//! `ssl=on` that accepts only `hostssl` connections, and a private `redis-server` that
//! listens on a TLS port only, both with certificates this test makes with the
//! `openssl` command. Guards against a `sslmode` or a `rediss://` URL that is accepted
//! but not honoured: clear text where TLS was asked for, a certificate from the wrong
//! CA or for the wrong host accepted, or a working TLS setup refused.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fred::{
    prelude::{Builder, Client, ClientLike, Config},
    types::{config::TlsConnector, ClusterHash, CustomCommand},
};
use surge::{
    config::DatabaseArgs,
    live::bus::{Bus, BusConfig, BusEvent, BusSink, Envelope},
    store::Db,
};

use crate::nodes::{free_port, Node};

/// A directory removed on drop, readable by the PostgreSQL server's user.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("surge-tls-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a second CA that signed nothing of ours, and a server certificate for
/// `localhost` and 127.0.0.1 signed by the first.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn make() -> Self {
        let dir = TempDir::new("certs");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "wrong-ca"] {
            run(
                Command::new("openssl")
                    .current_dir(&dir.0)
                    .args(["req", "-x509"])
                    .args(ec)
                    .args([
                        "-keyout",
                        &format!("{ca}.key"),
                        "-out",
                        &format!("{ca}.pem"),
                    ])
                    // Both CAs have the same name: only the key tells them apart.
                    .args(["-days", "2", "-subj", "/CN=Surge Test CA"])
                    .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                    .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
                "openssl req (CA)",
            );
        }
        run(
            Command::new("openssl")
                .current_dir(&dir.0)
                .args(["req", "-new"])
                .args(ec)
                .args([
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ]),
            "openssl req (server)",
        );
        std::fs::write(
            dir.path("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        run(
            Command::new("openssl")
                .current_dir(&dir.0)
                .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.pem"])
                .args(["-CAkey", "ca.key", "-set_serial", "2", "-days", "2"])
                .args(["-extfile", "server.ext", "-out", "server.pem"]),
            "openssl x509 (sign)",
        );
        Self { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path("ca.pem")
    }

    fn wrong_ca(&self) -> PathBuf {
        self.dir.path("wrong-ca.pem")
    }
}

/// The uid and gid PostgreSQL runs as: it refuses root, so as root the `postgres`
/// system user; otherwise ourselves.
fn pg_owner() -> Option<(u32, u32)> {
    let uid = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if uid(&["-u"])? != 0 {
        return None;
    }
    Some((
        uid(&["-u", "postgres"]).expect("running as root needs a `postgres` user"),
        uid(&["-g", "postgres"]).expect("postgres group"),
    ))
}

fn pg_bin(tool: &str) -> PathBuf {
    let dir = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .max()
        })
        .expect("PostgreSQL server binaries under /usr/lib/postgresql/*/bin");
    dir.join(tool)
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A private PostgreSQL with `ssl=on` whose pg_hba.conf admits `hostssl` only; stopped
/// (and its directory removed) on drop.
struct TlsPostgres {
    port: u16,
    owner: Option<(u32, u32)>,
    dir: TempDir,
}

impl TlsPostgres {
    fn start(certs: &Certs) -> Self {
        let owner = pg_owner();
        let dir = TempDir::new("pg");
        let data = dir.path("data");
        for (name, mode) in [("server.pem", 0o644), ("server.key", 0o600)] {
            let to = dir.path(name);
            std::fs::copy(certs.dir.path(name), &to).expect("copy certificate");
            set_mode(&to, mode);
        }
        if let Some((uid, gid)) = owner {
            chown_all(&dir.0, uid, gid);
        }
        run(
            as_owner(&mut Command::new(pg_bin("initdb")), owner)
                .current_dir(&dir.0)
                .args(["-D", &data.display().to_string()])
                .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync"),
            "initdb",
        );
        let port = free_port();
        let d = dir.0.display();
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
                 ssl = on\nssl_cert_file = '{d}/server.pem'\nssl_key_file = '{d}/server.key'\n\
                 fsync = off\nmax_connections = 40\n"
            ),
        )
        .expect("postgresql.auto.conf");
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\n",
        )
        .expect("pg_hba.conf");
        let pg = Self { port, owner, dir };
        run(
            as_owner(&mut Command::new(pg_bin("pg_ctl")), owner)
                .current_dir(&pg.dir.0)
                .args(["-D", &data.display().to_string()])
                .args(["-l", &pg.dir.path("log").display().to_string()])
                .args(["-w", "-t", "30", "start"])
                .stdout(Stdio::null()),
            "pg_ctl start",
        );
        pg
    }

    /// The URL of its `postgres` database with `params` as the query string.
    fn url(&self, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{params}",
            self.port
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_owner(&mut Command::new(pg_bin("pg_ctl")), self.owner)
            .current_dir(&self.dir.0)
            .args(["-D", &self.dir.path("data").display().to_string()])
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown_all(dir: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown dir");
    for entry in std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
    {
        std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid)).expect("chown file");
    }
}

/// A private `redis-server` on a TLS port only (no plain port); killed on drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
    _dir: TempDir,
}

impl TlsRedis {
    async fn start(certs: &Certs) -> Self {
        let dir = TempDir::new("redis");
        let port = free_port();
        let c = |name: &str| certs.dir.path(name).display().to_string();
        let child = Command::new("redis-server")
            .current_dir(&dir.0)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.0.display().to_string()])
            .args([
                "--tls-cert-file",
                &c("server.pem"),
                "--tls-key-file",
                &c("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &c("ca.pem"),
                "--tls-auth-clients",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server never listened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis
    }

    fn url(&self) -> String {
        format!("rediss://localhost:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An error and its causes on one line, as an operator reads them.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Pools from `url` exactly as `DATABASE_URL` makes them; a refusal of the settings
/// comes back as the configuration error's text.
fn pools(url: &str) -> Result<Db, String> {
    let mut args = surge::config::defaults::<DatabaseArgs>();
    args.database_url = Some(url.into());
    let cfg = args.validate().map_err(|e| e.to_string())?;
    Db::new(&cfg).map_err(|e| format!("{e:#}"))
}

/// Connects through the primary pool and says whether the session is encrypted.
async fn connect(url: &str) -> Result<bool, String> {
    let db = pools(url)?;
    let client = db.primary.get().await.map_err(|e| chain(&e))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| chain(&e))?;
    Ok(row.get(0))
}

#[actix_web::test]
async fn postgres_links_honour_sslmode_and_sslrootcert() {
    let certs = Certs::make();
    let pg = TlsPostgres::start(&certs);
    let ca = certs.ca().display().to_string();
    let wrong = certs.wrong_ca().display().to_string();

    // verify-full with the right CA connects, encrypted.
    let ok = connect(&pg.url(&format!("sslmode=verify-full&sslrootcert={ca}"))).await;
    assert_eq!(ok, Ok(true), "verify-full with the server's CA");

    // A certificate from another CA is refused, and the error says why.
    let refused = connect(&pg.url(&format!("sslmode=verify-full&sslrootcert={wrong}"))).await;
    let err = refused.expect_err("a certificate from another CA must be refused");
    assert!(
        err.contains("certificate verify failed"),
        "unclear error: {err}"
    );
    // So it is under verify-ca, and under require once a root certificate is given.
    for mode in ["verify-ca", "require"] {
        let refused = connect(&pg.url(&format!("sslmode={mode}&sslrootcert={wrong}"))).await;
        assert!(refused.is_err(), "{mode} with the wrong CA was accepted");
    }

    // The certificate names localhost and 127.0.0.1, not db.invalid: verify-full checks
    // the name it connects to, verify-ca does not (hostaddr keeps the socket on
    // 127.0.0.1 while the name checked is db.invalid).
    let misnamed = |mode: &str| {
        format!(
            "postgres://postgres@db.invalid:{}/postgres?hostaddr=127.0.0.1&sslmode={mode}\
             &sslrootcert={ca}",
            pg.port
        )
    };
    let err = connect(&misnamed("verify-full"))
        .await
        .expect_err("verify-full must check the host name");
    assert!(
        err.contains("certificate verify failed"),
        "unclear error: {err}"
    );
    assert_eq!(
        connect(&misnamed("verify-ca")).await,
        Ok(true),
        "verify-ca ignores the name"
    );

    // require without any CA encrypts and verifies nothing (the server's CA is not in
    // the system's roots); prefer, the default, encrypts when the server can.
    assert_eq!(connect(&pg.url("sslmode=require")).await, Ok(true));
    assert_eq!(connect(&pg.url("sslmode=prefer")).await, Ok(true));
    // verify-ca without a CA file trusts only the system's roots, which did not sign it.
    assert!(connect(&pg.url("sslmode=verify-ca")).await.is_err());

    // disable speaks clear text, which this server's pg_hba.conf refuses.
    let err = connect(&pg.url("sslmode=disable"))
        .await
        .expect_err("a clear-text connection must be refused by hostssl-only pg_hba");
    assert!(err.contains("no encryption"), "unexpected error: {err}");

    // Settings that cannot work stop startup, naming the variable.
    let err = pools(&pg.url("sslmode=verify_full"))
        .err()
        .expect("typo refused");
    assert!(
        err.contains("DATABASE_URL") && err.contains("verify_full"),
        "{err}"
    );
    let err = pools(&pg.url("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"))
        .err()
        .expect("missing CA file refused");
    assert!(
        err.contains("DATABASE_URL") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

/// Records what a bus hands over.
#[derive(Default)]
struct Collect(Mutex<Vec<Envelope>>);

impl BusSink for Collect {
    fn deliver(&self, envelope: Envelope) {
        if let Ok(mut got) = self.0.lock() {
            got.push(envelope);
        }
    }
    fn resync(&self) {}
}

/// A plain fred client over TLS with the bus's connector, connected.
async fn tls_redis_client(url: &str, ca: &Path) -> Result<Client, fred::error::Error> {
    let connector = surge::store::tls::redis_connector(Some(ca)).expect("connector");
    let mut config = Config::from_url(url)?;
    config.tls = Some(TlsConnector::from(connector).into());
    let client = Builder::from_config(config).build()?;
    client.init().await?;
    Ok(client)
}

fn bus_config(url: &str, ca: &Path, prefix: &str, node: &str) -> BusConfig {
    let mut cfg = BusConfig::in_process(node);
    cfg.redis_url = Some(url.into());
    cfg.redis_ca = Some(ca.to_owned());
    cfg.prefix = prefix.to_owned();
    cfg.reconnect_min = Duration::from_millis(50);
    cfg.reconnect_max = Duration::from_millis(200);
    cfg
}

#[actix_web::test]
async fn a_rediss_bus_checks_the_ca_and_carries_events() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs).await;
    let prefix = format!("surge-tls-{}", uuid::Uuid::new_v4().simple());

    // With the server's CA, two nodes' buses connect over TLS and an event crosses.
    let a = Bus::start(
        bus_config(&redis.url(), &certs.ca(), &prefix, "a"),
        Arc::new(Collect::default()),
    )
    .await
    .expect("bus a");
    let b_sink = Arc::new(Collect::default());
    let b = Bus::start(
        bus_config(&redis.url(), &certs.ca(), &prefix, "b"),
        b_sink.clone(),
    )
    .await
    .expect("bus b");
    assert!(
        a.is_connected() && b.is_connected(),
        "TLS buses did not connect"
    );
    let event = BusEvent::Stock {
        sku: "TLS-1".into(),
        available: 7,
        seq: 1,
    };
    a.publish(event.clone());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got: Vec<BusEvent> = b_sink
            .0
            .lock()
            .map(|g| g.iter().map(|e| e.event.clone()).collect())
            .unwrap_or_default();
        if !got.is_empty() {
            assert_eq!(got, vec![event], "b heard something else");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the event never crossed the TLS bus"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // With another CA the bus does not connect (and keeps retrying in the background).
    let wrong = Bus::start(
        bus_config(&redis.url(), &certs.wrong_ca(), &prefix, "c"),
        Arc::new(Collect::default()),
    )
    .await
    .expect("a bus starts even when Redis cannot be reached");
    assert!(
        !wrong.is_connected(),
        "a certificate from another CA was accepted"
    );
    wrong.stop().await;
    // What fred reports for it (and the bus logs) names the cause.
    let err = tls_redis_client(&redis.url(), &certs.wrong_ca())
        .await
        .expect_err("the wrong CA must be refused");
    assert!(
        err.to_string().contains("certificate verify failed"),
        "unclear error: {err}"
    );

    a.stop().await;
    b.stop().await;
}

/// The whole node: `surge serve` with `sslmode=verify-full` and a `rediss://` bus
/// becomes ready (its migrations ran over TLS), every connection it holds is
/// encrypted, and its bus is up. Guards against a path that connects outside the
/// pools (the migration run, the heartbeat) and so ignores the TLS settings.
#[actix_web::test]
async fn a_node_serves_over_tls_links_only() {
    let certs = Certs::make();
    let pg = TlsPostgres::start(&certs);
    let redis = TlsRedis::start(&certs).await;
    let ca = certs.ca().display().to_string();
    let url = pg.url(&format!("sslmode=verify-full&sslrootcert={ca}"));
    let redis_url = redis.url();
    let node = Node::start(
        &url,
        "tls-node",
        &[
            ("REDIS_URL", redis_url.as_str()),
            ("SURGE_REDIS_CA", ca.as_str()),
        ],
    )
    .await;
    let http = awc::Client::default();
    let mut resp = http
        .get(format!("{}/api/products", node.base))
        .send()
        .await
        .expect("products");
    assert_eq!(resp.status().as_u16(), 200);
    let _ = resp.body().await;
    // Redis listens on its TLS port only, so the node's two bus connections, named
    // in CLIENT LIST, are TLS connections.
    let admin = tls_redis_client(&redis.url(), &certs.ca())
        .await
        .expect("admin client");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let list: String = admin
            .custom(
                CustomCommand::new_static("CLIENT", ClusterHash::FirstKey, false),
                vec!["LIST"],
            )
            .await
            .expect("CLIENT LIST");
        if list.contains("name=surge-pub-tls-node") && list.contains("name=surge-sub-tls-node") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node's bus never connected: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = admin.quit().await;
    let db = pools(&url).expect("pools");
    let client = db.primary.get().await.expect("connect");
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'surge' AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl");
    let (encrypted, clear): (i64, i64) = (row.get(0), row.get(1));
    assert!(encrypted > 0, "the node holds no connection");
    assert_eq!(clear, 0, "the node holds clear-text connections");
}
