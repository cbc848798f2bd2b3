//! A TCP proxy of the tests' own, put between a node and PostgreSQL or Redis so that a
//! test can take the service away under a running node without touching the shared
//! server: cut every connection, refuse new ones for a while, or cut a connection right
//! after it forwards a `COMMIT`, so that the server commits and the client never hears.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};

struct State {
    /// New connections are accepted and forwarded.
    up: AtomicBool,
    /// Cut the next connection that forwards a `COMMIT` from the client.
    cut_on_commit: AtomicBool,
    /// Connections cut so far (by any means).
    cuts: AtomicU64,
    /// COMMITs forwarded and then cut.
    commit_cuts: AtomicU64,
    /// Bumped by `cut`: every connection of an older generation closes.
    generation: watch::Sender<u64>,
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (generation, _) = watch::channel(0);
        let state = Arc::new(State {
            up: AtomicBool::new(true),
            cut_on_commit: AtomicBool::new(false),
            cuts: AtomicU64::new(0),
            commit_cuts: AtomicU64::new(0),
            generation,
        });
        let target = target.to_owned();
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !state.up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    tokio::spawn(forward(client, target.clone(), Arc::clone(&state)));
                }
            }
        });
        Self { addr, state, task }
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A proxy in front of the PostgreSQL server of `url`.
    pub async fn for_pg(url: &str) -> Self {
        let cfg: tokio_postgres::Config = url.parse().expect("url");
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_owned(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        Self::start(&format!("{host}:{port}")).await
    }

    /// `url` (a PostgreSQL URL with no password) with its host and port replaced by the
    /// proxy's.
    pub fn pg_url(&self, url: &str) -> String {
        let cfg: tokio_postgres::Config = url.parse().expect("url");
        format!(
            "postgres://{}@{}/{}",
            cfg.get_user().unwrap_or("postgres"),
            self.addr,
            cfg.get_dbname().unwrap_or("postgres")
        )
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        self.blip();
    }

    /// Closes every open connection but keeps accepting new ones.
    pub fn blip(&self) {
        self.state.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Arms a one-shot cut: the next `COMMIT` a client sends is forwarded, and then its
    /// connection is closed before the server's answer comes back.
    pub fn cut_after_next_commit(&self) {
        self.state.cut_on_commit.store(true, Ordering::SeqCst);
    }

    /// Whether the armed commit cut has happened.
    pub fn commit_cuts(&self) -> u64 {
        self.state.commit_cuts.load(Ordering::SeqCst)
    }

    /// Connections closed by the proxy so far.
    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.blip();
        self.task.abort();
    }
}

/// The frame of a simple-protocol `COMMIT` as tokio-postgres sends it.
fn is_commit(buf: &[u8]) -> bool {
    buf.windows(7).any(|w| w == b"COMMIT\0")
}

async fn forward(client: TcpStream, target: String, state: Arc<State>) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let mut cut = state.generation.subscribe();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = {
        let state = Arc::clone(&state);
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match cr.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if sw.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if is_commit(&buf[..n])
                    && state
                        .cut_on_commit
                        .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    let _ = sw.flush().await;
                    state.commit_cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cut.changed() => {}
    }
    // Dropping both halves of both sockets closes the connection both ways.
    state.cuts.fetch_add(1, Ordering::SeqCst);
}

#[actix_web::test]
async fn the_proxy_forwards_and_cuts() {
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let echo_addr = echo.local_addr().expect("echo address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(&echo_addr.to_string()).await;
    let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
    c.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf)
        .await
        .expect("echo through the proxy");
    assert_eq!(&buf, b"ping");
    proxy.cut();
    let mut rest = Vec::new();
    // A reset or an end of stream both mean closed; only a hang is a failure.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), c.read_to_end(&mut rest))
        .await
        .expect("a cut closes the connection");
    assert!(rest.is_empty(), "nothing arrives after a cut");
    let refused = TcpStream::connect(proxy.addr()).await;
    if let Ok(mut s) = refused {
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("a refused connection closes at once");
        assert!(matches!(n, Ok(0) | Err(_)), "no data while cut");
    }
    proxy.restore();
    let mut c = TcpStream::connect(proxy.addr())
        .await
        .expect("connect again");
    c.write_all(b"pong").await.expect("write");
    c.read_exact(&mut buf).await.expect("echo after restore");
    assert_eq!(&buf, b"pong");
    assert!(proxy.cuts() >= 1);
}

#[actix_web::test]
async fn a_commit_cut_commits_on_the_server_while_the_client_hears_nothing() {
    let db = crate::common::TestDb::create().await;
    let direct = db.client().await;
    direct
        .batch_execute("CREATE TABLE t (x int)")
        .await
        .expect("table");
    let cfg: tokio_postgres::Config = db.url.parse().expect("url");
    let host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let proxy = Proxy::start(&format!("{host}:{port}")).await;
    let mut via = tokio_postgres::Config::new();
    via.host("127.0.0.1")
        .port(proxy.addr().port())
        .user(cfg.get_user().unwrap_or("postgres"))
        .dbname(cfg.get_dbname().unwrap_or("postgres"));
    let (mut client, conn) = via.connect(tokio_postgres::NoTls).await.expect("via proxy");
    tokio::spawn(conn);
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO t VALUES (1)", &[])
        .await
        .expect("insert");
    proxy.cut_after_next_commit();
    let answer = tx.commit().await;
    assert!(
        answer.is_err(),
        "the client never hears the COMMIT's answer"
    );
    assert_eq!(proxy.commit_cuts(), 1);
    // The server got the COMMIT: the row is there (give the backend a moment).
    let mut n = 0;
    for _ in 0..50 {
        n = direct
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .expect("count")
            .get::<_, i64>(0);
        if n == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(n, 1, "the cut COMMIT was committed all the same");
}
