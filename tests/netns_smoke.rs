//! The network-namespace harness (tests/netns) works: `it` reaches `ot` through `gw` in IPv4 and
//! IPv6, connections to closed ports are refused fast, and the namespaces are removed when the
//! topology is dropped, also when the test panics. Needs root and iproute2.

mod netns;

use netns::{Topology, netns_exists};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects from `it` to a listener in `ot` on `ot_ip`, exchanges a few bytes both ways, and
/// checks that `ot` sees `it`'s own address (routed by `gw`, not translated).
fn exchange_it_to_ot(t: &Topology, ot_ip: IpAddr, it_ip: IpAddr) {
    let listener =
        t.ot.listen(SocketAddr::new(ot_ip, 0))
            .expect("listen in ot");
    let server_addr = listener.local_addr().unwrap();
    assert_eq!(server_addr.ip(), ot_ip);

    // The handshake completes into the listen backlog, so connect, then accept, on one thread.
    let mut client =
        t.it.connect(server_addr, CONNECT_TIMEOUT)
            .expect("connect from it to ot");
    assert_eq!(client.local_addr().unwrap().ip(), it_ip);
    let (mut server, peer) = listener.accept().expect("accept in ot");
    assert_eq!(peer.ip(), it_ip, "ot should see it's address");

    for s in [&client, &server] {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    }
    client.write_all(b"ping from it").unwrap();
    let mut buf = [0u8; 12];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping from it");
    server.write_all(b"pong from ot").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong from ot");

    // And in the other direction: ot closes, it sees EOF.
    drop(server);
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn it_reaches_ot_through_gw_ipv4() {
    let t = Topology::new();
    exchange_it_to_ot(&t, t.ot_addr.into(), t.it_addr.into());
}

#[test]
fn it_reaches_ot_through_gw_ipv6() {
    let t = Topology::new();
    exchange_it_to_ot(&t, t.ot_addr6.into(), t.it_addr6.into());
}

#[test]
fn ot_reaches_it_and_gw_reaches_both() {
    let t = Topology::new();
    exchange_it_to_ot_reverse(&t);
    for (ip, ns) in [
        (IpAddr::from(t.it_addr), &t.it),
        (t.ot_addr.into(), &t.ot),
        (t.it_addr6.into(), &t.it),
        (t.ot_addr6.into(), &t.ot),
    ] {
        let l = ns.listen(SocketAddr::new(ip, 0)).unwrap();
        let c = t.gw.connect(l.local_addr().unwrap(), CONNECT_TIMEOUT);
        assert!(c.is_ok(), "gw -> {ip}: {c:?}");
        l.accept().unwrap();
    }
}

fn exchange_it_to_ot_reverse(t: &Topology) {
    let l = t.it.listen(SocketAddr::new(t.it_addr.into(), 0)).unwrap();
    let c =
        t.ot.connect(l.local_addr().unwrap(), CONNECT_TIMEOUT)
            .expect("ot -> it");
    let (_s, peer) = l.accept().unwrap();
    assert_eq!(peer, c.local_addr().unwrap());
}

#[test]
fn closed_port_in_ot_is_refused_fast() {
    let t = Topology::new();
    for ip in [IpAddr::from(t.ot_addr), t.ot_addr6.into()] {
        // Nothing has ever listened in this fresh namespace. (Not "bind a port, close it, use
        // it": a `Command` spawned at that moment by a parallel test briefly inherits the
        // listener's fd and keeps it listening.)
        let port = 7;
        let start = Instant::now();
        let err =
            t.it.connect(SocketAddr::new(ip, port), CONNECT_TIMEOUT)
                .expect_err("nothing listens there");
        let elapsed = start.elapsed();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{ip}:{port}: {err}"
        );
        assert!(
            elapsed < Duration::from_secs(1),
            "{ip}:{port}: refusal took {elapsed:?}"
        );
    }
}

#[test]
fn gw_forwards_and_addresses_are_in_place() {
    let t = Topology::new();
    assert_eq!(t.gw.read_sysctl("net/ipv4/ip_forward"), "1");
    assert_eq!(t.gw.read_sysctl("net/ipv6/conf/all/forwarding"), "1");
    // Through `ip netns exec` too (`command` and `run`).
    assert_eq!(
        t.gw.run("cat", &["/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    let out =
        t.it.command("ip")
            .args(["-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains(&format!("{}/24", t.it_addr)), "{shown}");
    assert!(shown.contains(&format!("{}/64", t.it_addr6)), "{shown}");
    assert!(!shown.contains("tentative"), "{shown}");
    let gw_links = t.gw.run("ip", &["-o", "link", "show"]);
    assert!(
        gw_links.contains("it0@") && gw_links.contains("ot0@"),
        "{gw_links}"
    );
    let ot_routes = t.ot.run("ip", &["route", "show"]);
    assert!(
        ot_routes.contains(&format!("via {}", t.gw_ot_addr)),
        "{ot_routes}"
    );
    // The veths live only in the namespaces.
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    assert!(
        !root_links.contains("it0@") && !root_links.contains("ot0@"),
        "{root_links}"
    );
}

#[test]
fn run_panics_with_stderr_on_failure() {
    let t = Topology::new();
    let err = catch_unwind(AssertUnwindSafe(|| {
        t.it.run("ip", &["link", "show", "dev", "no-such-dev"]);
    }))
    .expect_err("a failing command panics");
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        msg.contains("no-such-dev") && msg.contains("stderr"),
        "{msg}"
    );
}

#[test]
fn namespaces_are_removed_on_drop() {
    let t = Topology::new();
    let names: Vec<String> = t.namespaces().iter().map(|ns| ns.name.clone()).collect();
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for name in &names {
        assert!(
            listed.contains(name.as_str()),
            "{name} not in `ip netns list`:\n{listed}"
        );
    }
    drop(t);
    for name in &names {
        assert!(!netns_exists(name), "{name} still exists after drop");
    }
}

#[test]
fn namespaces_are_removed_when_the_test_panics() {
    let mut names: Vec<String> = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let t = Topology::new();
        names = t.namespaces().iter().map(|ns| ns.name.clone()).collect();
        assert!(names.iter().all(|n| netns_exists(n)));
        panic!("deliberate panic with a live topology");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 3);
    for name in &names {
        assert!(!netns_exists(name), "{name} still exists after a panic");
    }
}

#[test]
fn names_are_unique_and_live_sockets_do_not_block_removal() {
    let a = Topology::new();
    let b = Topology::new();
    for x in a.namespaces() {
        for y in b.namespaces() {
            assert_ne!(x.name, y.name);
        }
    }
    // Sockets still open inside when the topology is dropped: the names go all the same (the
    // unnamed namespaces live on until the sockets are closed).
    let names: Vec<String> = a.namespaces().iter().map(|ns| ns.name.clone()).collect();
    let l = a.ot.listen(SocketAddr::new(a.ot_addr.into(), 0)).unwrap();
    let c =
        a.it.connect(l.local_addr().unwrap(), CONNECT_TIMEOUT)
            .unwrap();
    drop(a);
    for name in &names {
        assert!(!netns_exists(name), "{name} still exists after drop");
    }
    assert_eq!(c.peer_addr().unwrap(), l.local_addr().unwrap());
    drop((c, l));
    // The other topology is untouched.
    exchange_it_to_ot(&b, b.ot_addr6.into(), b.it_addr6.into());
}
