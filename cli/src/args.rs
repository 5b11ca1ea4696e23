//! The command line: every command, option and its help text.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Read, write, watch and lock keys on etcd, Consul, ZooKeeper or Redis, \
and run a command under a lock or while elected leader.";

const LONG_ABOUT: &str = "\
Read, write, watch and lock keys on etcd, Consul, ZooKeeper or Redis, and run a
command under a lock or while elected leader.

The store is chosen by a URL, given with --url or the ANYKV_URL environment
variable (one of them is required). The URL's path is the key namespace: every
key is relative to it.

  etcd://127.0.0.1:2379/app               etcd (several hosts: h1:2379,h2:2379;
                                          ?username=u&password=p)
  consul://127.0.0.1:8500/app             Consul (?token=…&datacenter=dc1)
  zk://127.0.0.1:2181/app                 ZooKeeper (?session_timeout=10s)
  redis://[user:pass@]127.0.0.1:6379/app  Redis (?db=0); rediss://… for TLS
                                          (?ca_file=/path/ca.crt)
  memory://                               in-process only: useless across runs

Options every backend takes: session_ttl (default 10s: how long a crashed
holder keeps its locks; Consul accepts 10s to 24h) and connect_timeout
(default 5s). Durations are written 500ms, 10s, 2m, 1h or as plain seconds. Passwords and tokens are never
printed: messages show the URL with them replaced by ***.";

const AFTER_HELP: &str = "\
Examples:
  export ANYKV_URL=etcd://127.0.0.1:2379/app
  anykv put config/mode on                  write a key
  anykv put config/blob - < file.bin        the value from stdin
  anykv put jobs/1 x --create               only if absent (exit 4 if present)
  anykv get config/mode                     print the value (exit 3 if missing)
  anykv --json ls config                    every key below config/, one JSON line each
  anykv rm config --recursive               delete config and everything below
  anykv watch config/mode                   print every change until Ctrl-C
  anykv lock jobs/nightly -- ./backup.sh    run backup.sh while holding the lock
  anykv elect service/leader --id node-1 -- ./serve
                                            run serve only while node-1 leads
  anykv follow service/leader               print who leads, and every change

Exit codes: 0 ok, 1 failure, 2 usage or bad URL, 3 key not found, 4 precondition
failed (--create, --if-version, lock --try), 5 unauthorized, 6 store
unreachable, 7 lock or leadership lost (the command was ended), 8 unsupported
by the backend; lock/elect otherwise exit with their command's code (126/127:
it could not be run; 128+N: ended by signal N).";

/// The anykv command line.
#[derive(Debug, Parser)]
#[command(name = "anykv", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    /// The store URL (e.g. etcd://127.0.0.1:2379/app); see the list above.
    #[arg(long, env = "ANYKV_URL", global = true, hide_env_values = true)]
    pub url: Option<String>,

    /// One JSON object per line instead of human output (for scripts).
    /// Values are UTF-8 strings, or base64 when not UTF-8 (see "encoding").
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a key's value (exit 3 if it does not exist).
    Get {
        /// The key, relative to the URL's namespace.
        key: String,
        /// Print the value's bytes exactly, without a trailing newline.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
    },
    /// Write a key.
    Put(PutArgs),
    /// Delete a key (a missing key is not an error, unless --if-version is given).
    Rm {
        /// The key, relative to the URL's namespace.
        key: String,
        /// Delete the key and everything below it (KEY/…).
        #[arg(long, short = 'r', conflicts_with = "if_version")]
        recursive: bool,
        /// Only if the key's version is N (exit 4 if it has another, 3 if gone).
        #[arg(long, value_name = "N")]
        if_version: Option<u64>,
    },
    /// List every key below PREFIX (recursively, sorted); "" lists the whole namespace.
    Ls {
        /// The prefix; keys strictly below PREFIX/ are listed.
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Print a key's state, then every change, until Ctrl-C or SIGTERM (exit 0).
    Watch {
        /// The key, relative to the URL's namespace.
        key: String,
    },
    /// Print every key below PREFIX, then every change below it, until Ctrl-C or SIGTERM.
    WatchTree {
        /// The prefix to watch ("" for the whole namespace).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Run a command while holding a lock.
    ///
    /// Waits for the lock, then runs CMD with ANYKV_FENCING_TOKEN (and
    /// ANYKV_LOCK_KEY) in its environment. When CMD exits, the lock is
    /// released and anykv exits with CMD's exit code. If the lock is lost
    /// meanwhile (its key deleted, the session expired, the store unreachable
    /// for too long), CMD gets SIGTERM at once, SIGKILL after --grace, and
    /// anykv exits with 7. SIGINT, SIGTERM and SIGHUP sent to anykv are
    /// forwarded to CMD. CMD is killed (SIGKILL) if anykv itself dies.
    Lock {
        /// What the lock key holds while locked: the holder's identity
        /// (default: host name and pid).
        #[arg(long, value_name = "NODE")]
        id: Option<String>,
        /// Fail at once with exit 4 if the lock is held, instead of waiting.
        #[arg(long = "try")]
        try_only: bool,
        /// The lock key and the command.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run a command only while elected leader.
    ///
    /// Campaigns for leadership of KEY under --id. Each time it is elected it
    /// starts CMD with ANYKV_FENCING_TOKEN (the term's token, increasing from
    /// term to term) and ANYKV_LOCK_KEY. When the leadership is lost, CMD gets
    /// SIGTERM at once and SIGKILL after --grace; then anykv campaigns again
    /// and starts a fresh CMD in its next term (with --once it exits with 7
    /// instead). When CMD exits by itself, anykv steps down and exits with
    /// CMD's code. Signals are forwarded as for `lock`; CMD is killed if anykv
    /// itself dies.
    Elect {
        /// This candidate's identity, what `follow` shows (default: host name and pid).
        #[arg(long, value_name = "NODE")]
        id: Option<String>,
        /// Exit with 7 when the leadership is lost, instead of campaigning again.
        #[arg(long)]
        once: bool,
        /// The election key and the command.
        #[command(flatten)]
        run: RunArgs,
    },
    /// Print the current leader of an election key, then every change, until Ctrl-C.
    Follow {
        /// The election key.
        key: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// For example: anykv completions bash > /etc/bash_completion.d/anykv
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the live instances of SERVICE (anykv-recipes service discovery),
    /// one a line (`id endpoint key=value…`); with --watch, the set again
    /// after every change until Ctrl-C.
    Members {
        /// The service's name.
        service: String,
        /// The key prefix services are registered below.
        #[arg(long, default_value = "services", value_name = "PREFIX")]
        prefix: String,
        /// Print the set again after every change, until Ctrl-C or SIGTERM.
        #[arg(long)]
        watch: bool,
    },
    /// A durable FIFO work queue (anykv-recipes): push, pop, len.
    #[command(subcommand)]
    Queue(QueueCommand),
}

/// `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Append ITEM to the queue NAME; prints the item's sequence number.
    Push {
        /// The queue's name (a key below the URL's namespace).
        name: String,
        /// The item.
        item: String,
    },
    /// Take the oldest item of NAME, print it and remove it from the queue
    /// (waits for one unless --no-wait; exit 3 if --no-wait finds it empty).
    Pop {
        /// The queue's name.
        name: String,
        /// Exit with 3 at once if the queue is empty, instead of waiting.
        #[arg(long)]
        no_wait: bool,
        /// How long the item stays claimed if anykv dies before removing it.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        visibility_timeout: Duration,
    },
    /// Print how many items NAME holds (claimed ones included).
    Len {
        /// The queue's name.
        name: String,
    },
}

/// The options of `put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The key, relative to the URL's namespace.
    pub key: String,
    /// The value; `-` reads it from stdin (all bytes, as they are).
    pub value: String,
    /// The key expires this long after the write (500ms, 10s, 2m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// Only if the key does not exist yet (exit 4 if it does).
    #[arg(long, conflicts_with = "if_version")]
    pub create: bool,
    /// Only if the key's version is N (exit 4 if it has another, 3 if gone).
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
}

/// What `lock` and `elect` take: the key, the child and how to end it.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The lock or election key, relative to the URL's namespace.
    pub key: String,
    /// How long CMD has between SIGTERM and SIGKILL when the lock is lost
    /// (0s: SIGKILL right after SIGTERM).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_grace)]
    pub grace: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    anykv::url::parse_duration(raw)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{raw:?} is not a duration such as 500ms, 10s, 2m or 1h"))
}

fn parse_grace(raw: &str) -> Result<Duration, String> {
    anykv::url::parse_duration(raw)
        .ok_or_else(|| format!("{raw:?} is not a duration such as 0s, 500ms, 10s or 2m"))
}
