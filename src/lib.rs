//! droot-fleet: build with Docker, ship as a tarball, run in a chroot jail, on every host of a fleet.
//!
//! Where things live:
//! - [`artifact`]: archive formats (tar, gzip, zstd), our streaming tar reader (GNU tar's
//!   formats, PAX, sparse files) and the hardened streaming unpacker.
//! - [`release`]: the release directory (`releases/<v>`, `current`), atomic switch, rollback,
//!   pruning, the in-place rsync mode, the store's protection (0700, `nosuid,nodev`) and its
//!   user namespace range (record, host registry, shifted owners).
//! - [`beneath`]: descriptor-relative file operations that never follow a symlink (openat2).
//! - [`mountinfo`]: parsing `/proc/self/mountinfo`, and unmounting everything below a path.
//! - [`newmount`]: the new mount API (`open_tree`, `mount_setattr`, `move_mount`).
//! - [`teardown`]: `umount` and `rm` of a root.
//! - [`jail`]: `run` — mount, PID and user namespaces, /dev, binds, chroot, user,
//!   capabilities, seccomp, env, init, the pty, the capped log pipe of a supervised jail.
//! - [`deploy`]: fleet deploy — the signed deploy event, rollout waves, desired state, the
//!   artifact fetcher (`s3://`, `https://`, `file://`, streamed, sha256-checked), `[apps.NAME]`
//!   settings, the jail supervisor, health checks, the per-app activation state machine (pure).
//! - [`export`]: Docker image or `docker save`/OCI archive to a flat rootfs tar with `/.drootenv`.
//! - [`id_range`]: the host uid/gid range a jail in a user namespace maps to.
//! - [`dirs`]: directories the tool creates, with an explicit mode whatever the umask.
//! - [`drootenv`]: the `/.drootenv` env file format, written by export and read by run.
//! - [`gossip`]: the sans-io protocol core of the agent (envelope, keyring, clocks, events, queries).
//! - [`agent`]: `droot-fleet agent`, the gossip daemon around the [`gossip`] core: a sans-io
//!   state machine owning foca, the task executing its effects (sockets, handlers, snapshot, keys).
//! - [`api`]: the agent's HTTP/JSON control API (server, routes, typed client).
//! - [`wall`]: the wall clock in the crate's units.
//! - [`wire`]: the control API's wire types and address, shared by [`agent`] and [`api`].
//! - [`durations`], [`atomic_file`]: duration syntax and crash-safe file replacement,
//!   shared by [`agent`] and [`deploy`].
//! - [`keytext`]: Ed25519 keys as one line of base64 (deploy signing, enrollment and node
//!   keys).
//! - [`cancel`]: a cancellation token that reaches blocking readers (fetch, unpack).
//! - [`sizes`]: byte sizes as operators write them (`8GiB`).
//! - [`secret_file`]: reading a keyring, signing key or config with a token only when no
//!   other user can read or change it; writing one 0600.
//! - [`log_throttle`]: one log line per period for a failure that repeats on every retry.
//! - [`sd_notify`]: telling the service manager (systemd, `Type=notify`) that the agent is
//!   ready, reloading or stopping.
//! - [`metrics`]: the Prometheus text format and a histogram (pure; the agent, the deploy
//!   controller and the API build their metric families on it).
//! - [`publish`]: an export streamed into the artifact store with its digest and chunk index.
//! - [`fanout`]: the fleet fan-out: the chunk index, which peer to ask for each piece, and
//!   the artifacts a node holds for its peers.
//! - [`timeline`]: items in time order, ties in queued order (the agent's timers, the
//!   simulator's virtual time).
//! - [`sim`]: the deterministic fleet simulator: the agent's own state machines over a
//!   simulated network on a virtual clock, a Serf/memberlist model beside them.
//! - [`cli`]: the clap front end; the only place that uses `anyhow`.
//!
//! Layering (imports only point left): the leaves ([`wire`], [`durations`], [`sizes`],
//! [`atomic_file`], [`secret_file`], [`wall`], [`log_throttle`], [`cancel`], [`keytext`],
//! [`sd_notify`], [`metrics`], [`timeline`], [`fanout`]) ← [`gossip`] ← [`agent`] ←
//! [`deploy`] ← [`api`] ← [`cli`]; [`sim`] sits beside [`api`].
//! The agent carries the deploy tables of its config file untouched; the CLI parses them
//! and wires the agent, the deploy controller and the API together.

pub mod agent;
pub mod api;
pub mod artifact;
pub mod atomic_file;
pub mod beneath;
pub mod cancel;
pub mod cli;
pub mod deploy;
pub mod dirs;
pub mod drootenv;
pub mod durations;
pub mod export;
pub mod fanout;
pub mod gossip;
pub mod id_range;
pub mod jail;
pub mod keytext;
pub mod log_throttle;
pub mod metrics;
pub mod mountinfo;
pub mod newmount;
pub mod publish;
pub mod release;
pub mod sd_notify;
pub mod secret_file;
pub mod sim;
pub mod sizes;
pub mod teardown;
pub mod timeline;
pub mod wall;
pub mod wire;
