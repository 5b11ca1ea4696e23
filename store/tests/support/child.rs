//! The helper child of the "killed process" cases: this test binary run
//! again with the store URL in an environment variable. It holds an
//! ephemeral key and a lock (both with the value `child`), says
//! `READY <fencing token>` on stdout, and waits to be SIGKILLed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anykv::{Error, LockOptions, PutOptions, Store, StoreExt};

/// How long the parent waits for the child to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// How long an orphaned child lingers before it gives up by itself.
const LINGER: Duration = Duration::from_secs(300);

/// What a test binary's helper child holds, and the variable that makes the
/// binary one.
pub struct Holder {
    /// Set in the child's environment: the URL of the store it opens.
    pub url_env: &'static str,
    /// The ephemeral key it writes.
    pub key: &'static str,
    /// The lock it takes.
    pub lock: &'static str,
}

impl Holder {
    /// In the helper child (its variable is set): hold the key and the lock
    /// until killed, never returning. Otherwise nothing; call it first in `main`.
    pub fn serve_if_child(&self) {
        if let Ok(url) = std::env::var(self.url_env) {
            self.serve(&url);
        }
    }

    fn serve(&self, url: &str) -> ! {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                say(&format!("ERROR runtime: {e}"));
                std::process::exit(2)
            }
        };
        runtime.block_on(async {
            let held = async {
                let store: Arc<dyn Store> = anykv::open(url).await?;
                store
                    .put(self.key, "child", PutOptions::ephemeral())
                    .await?;
                let guard = store
                    .new_lock(self.lock, LockOptions::new("child"))
                    .await?
                    .lock()
                    .await?;
                Ok::<_, Error>((store, guard))
            }
            .await;
            match held {
                Ok(held) => {
                    say(&format!("READY {}", held.1.fencing_token()));
                    // Until killed; a lost parent does not leave us for good.
                    tokio::time::sleep(LINGER).await;
                    drop(held);
                    std::process::exit(0)
                }
                Err(e) => {
                    say(&format!("ERROR {e}"));
                    std::process::exit(1)
                }
            }
        })
    }

    /// In the parent: starts the helper child on the store at `url` and
    /// waits until it holds the key and the lock.
    pub fn spawn(&self, url: &str) -> Result<HelperChild, super::BoxError> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(self.url_env, url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("the child has no stdout")?;
        let mut child = HelperChild { child, token: 0 };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(READY_WITHIN)
            .map_err(|_| format!("the child did not get ready within {READY_WITHIN:?}"))?;
        child.token = line
            .strip_prefix("READY ")
            .and_then(|token| token.trim().parse().ok())
            .ok_or_else(|| format!("the child failed: {line:?}"))?;
        Ok(child)
    }
}

/// The running helper child; SIGKILLed when dropped if the case did not.
pub struct HelperChild {
    child: Child,
    token: u64,
}

impl HelperChild {
    /// The fencing token of the child's lock.
    pub fn fencing_token(&self) -> u64 {
        self.token
    }

    /// SIGKILL, no chance to clean up. Returns when the signal was sent,
    /// after which it waits for the child to be gone.
    pub fn kill(&mut self) -> Instant {
        let _ = self.child.kill();
        let killed = Instant::now();
        let _ = self.child.wait();
        killed
    }
}

impl Drop for HelperChild {
    fn drop(&mut self) {
        self.kill();
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
