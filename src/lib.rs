//! ztgate: an edge zero-trust segmentation gateway for factories.
//!
//! A short tour, following one session (see `DESIGN.md` for the why):
//!
//! - [`listener`] accepts TCP, runs the TLS handshake (client certificate required, [`tls`]),
//!   picks the service by SNI or the listener's default, and reads the peer's [`identity`].
//! - [`session`] relays one client: each frame is decoded by a sans-IO codec in [`protocol`],
//!   decided by the pure [`policy`], forwarded as its original bytes or refused the way the
//!   protocol expects, and recorded in [`audit`].
//! - [`config`] turns `ztgate.toml` and `policies/*.toml` into a validated model, with errors
//!   that name file, line and column; [`pki`] makes the certificates (`ztgate ca`).
//! - [`gateway`] wires it together for `ztgate run` and `ztgate demo`.

pub mod audit;
pub mod cli;
pub mod config;
pub mod demo;
pub mod firewall;
pub mod gateway;
pub mod identity;
pub mod listener;
pub mod pki;
pub mod policy;
pub mod protocol;
pub mod session;
pub mod tls;
