//! The gateway end to end over mTLS, with real Modbus servers behind it (tokio-modbus's server
//! as the simulated PLC, pymodbus's server as the fragile one) and real clients in front
//! (tokio-modbus's client over our TLS stream, and raw frames for what no library sends).

mod common;

use common::*;
use tokio_modbus::prelude::*;
use ztgate::config::SourceFile;
use ztgate::demo::client::adu;
use ztgate::demo::plc::Plc;

async fn plc() -> Plc {
    Plc::start("127.0.0.1:0".parse().unwrap())
        .await
        .expect("PLC starts")
}

#[tokio::test]
async fn allowed_read_returns_the_plcs_data_through_a_real_modbus_client() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let tls = env.connect(HMI).await.into_inner();
    let mut ctx = tokio_modbus::client::tcp::attach_slave(tls, Slave(1));
    let values = ctx
        .read_holding_registers(10, 5)
        .await
        .expect("io")
        .expect("no exception");
    assert_eq!(values, vec![10, 11, 12, 13, 14]);
    let inputs = ctx
        .read_input_registers(0, 2)
        .await
        .expect("io")
        .expect("no exception");
    assert_eq!(inputs, vec![1000, 1001]);
    let coils = ctx
        .read_coils(0, 3)
        .await
        .expect("io")
        .expect("no exception");
    assert_eq!(coils, vec![false, false, false]);
    // A write the operator's rule allows reaches the PLC.
    ctx.write_single_register(110, 700)
        .await
        .expect("io")
        .expect("no exception");
    assert_eq!(plc.holding(110), Some(700));
    let opened = env.wait_event("session_opened", |_| true).await;
    assert_eq!(opened["identity"], HMI);
    assert_eq!(opened["roles"], serde_json::json!(["operator"]));
    assert_eq!(opened["service"], "plc-line1");
    let write = env.wait_event("write_allowed", |_| true).await;
    assert_eq!(write["rule"], "operator-setpoints");
    assert_eq!(write["request"]["address"], 110);
}

#[tokio::test]
async fn denies_write_to_protected_register_and_the_plc_is_unchanged() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let tls = env.connect(HMI).await.into_inner();
    let mut ctx = tokio_modbus::client::tcp::attach_slave(tls, Slave(1));
    let denied = ctx.write_single_register(5, 4242).await.expect("io");
    assert_eq!(denied, Err(ExceptionCode::IllegalFunction));
    let denied = ctx.write_single_coil(3, true).await.expect("io");
    assert_eq!(denied, Err(ExceptionCode::IllegalFunction));
    // The session is still usable after denials.
    assert_eq!(
        ctx.read_holding_registers(5, 1).await.expect("io"),
        Ok(vec![5])
    );
    assert_eq!(plc.holding(5), Some(5));
    assert!(!plc.image().coils[3]);
    let denials = env.events("request_denied").await;
    assert_eq!(denials.len(), 2, "{denials:#?}");
    assert_eq!(denials[0]["reason"]["kind"], "address");
    assert_eq!(denials[0]["rule"], "operator-setpoints");
    assert_eq!(denials[0]["exception"], 1);
    assert_eq!(denials[1]["reason"]["kind"], "function");
}

#[tokio::test]
async fn refuses_a_write_outside_the_value_bounds() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let mut c = env.connect(HMI).await;
    // FC16 setpoints 100..102 = [10, 1501, 20]: one value outside 0..=1500.
    let r = c
        .request(1, &[16, 0, 100, 0, 3, 6, 0, 10, 0x05, 0xDD, 0, 20])
        .await
        .expect("response");
    assert_eq!(exception(&r), Some(0x01));
    assert_eq!(&plc.image().holding[100..103], &[100, 101, 102]);
    // The same write within bounds goes through.
    let r = c
        .request(1, &[16, 0, 100, 0, 3, 6, 0, 10, 0x05, 0xDC, 0, 20])
        .await
        .expect("response");
    assert_eq!(r, vec![16, 0, 100, 0, 3]);
    assert_eq!(&plc.image().holding[100..103], &[10, 1500, 20]);
    let denial = env.wait_event("request_denied", |_| true).await;
    assert_eq!(denial["reason"]["kind"], "value");
    assert_eq!(denial["reason"]["address"], 101);
    assert_eq!(denial["reason"]["value"], 1501);
}

#[tokio::test]
async fn on_deny_illegal_data_address_answers_0x02_for_address_denials_only() {
    let plc = plc().await;
    let opts = Options {
        service: "on_deny = \"illegal_data_address\"".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect(HMI).await;
    let r = c.request(1, &[6, 0, 5, 0, 1]).await.expect("response");
    assert_eq!(exception(&r), Some(0x02), "address denial");
    let r = c.request(1, &[5, 0, 3, 0xFF, 0]).await.expect("response");
    assert_eq!(exception(&r), Some(0x01), "function denial");
}

#[tokio::test]
async fn on_deny_reset_closes_the_connection() {
    let plc = plc().await;
    let opts = Options {
        service: "on_deny = \"reset\"".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect(HMI).await;
    assert_eq!(read_register(&mut c, 0).await, 0);
    c.send(&adu(9, 1, &[6, 0, 5, 0, 1])).await.unwrap();
    assert!(
        matches!(c.read_frame().await, Ok(None) | Err(_)),
        "connection must be closed"
    );
    let closed = env.wait_event("session_closed", |_| true).await;
    assert_eq!(closed["reason"]["kind"], "denied_reset");
    assert_eq!(plc.holding(5), Some(5));
}

#[tokio::test]
async fn rejects_handshakes_without_a_valid_client_certificate_and_audits_them() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let cfg = |cert: Option<&ztgate::pki::IssuedCert>| env.pki.config(cert, BOTH);
    async fn refused(c: std::io::Result<TlsClient>) -> bool {
        match c {
            Err(_) => true,
            // TLS 1.3: the client finishes before the server's verdict arrives; the first
            // exchange fails instead.
            Ok(mut c) => c.request(1, &[3, 0, 0, 0, 1]).await.is_err(),
        }
    }
    let connect = ztgate::demo::client::connect_tls;

    // 1. No client certificate.
    assert!(refused(connect(env.addr, cfg(None), None).await).await);
    // 2. A certificate from another CA.
    let rogue = ztgate::pki::Ca::generate("rogue", 1).unwrap();
    let foreign = rogue
        .issue_client(&ztgate::pki::CertSpec::new("x", 1).with_uri(HMI))
        .unwrap();
    assert!(refused(connect(env.addr, cfg(Some(&foreign)), None).await).await);
    // 3. An expired certificate from the right CA.
    let expired = env
        .pki
        .ca
        .issue_client(&ztgate::pki::CertSpec::new("x", 1).with_uri(HMI).expired())
        .unwrap();
    assert!(refused(connect(env.addr, cfg(Some(&expired)), None).await).await);
    // 4. A valid certificate but an SNI no service answers to.
    let good = env.pki.client("c", Some(HMI));
    assert!(refused(connect(env.addr, cfg(Some(&good)), Some("plc-line9")).await).await);
    // The same certificate with the right SNI works: the rejections above were not flukes.
    let mut ok = connect(env.addr, cfg(Some(&good)), Some("plc-line1"))
        .await
        .unwrap();
    assert_eq!(read_register(&mut ok, 7).await, 7);

    let rejected = env.audit().await;
    let reasons: Vec<String> = rejected
        .iter()
        .filter(|e| e["event"] == "tls_rejected")
        .map(|e| e["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    assert!(
        reasons[0].contains("NoCertificatesPresented") || reasons[0].contains("certificate"),
        "{}",
        reasons[0]
    );
    assert!(reasons[1].contains("UnknownIssuer"), "{}", reasons[1]);
    assert!(reasons[2].contains("expired"), "{}", reasons[2]);
    assert!(
        reasons[3].contains("unknown SNI \"plc-line9\""),
        "{}",
        reasons[3]
    );
    assert!(
        rejected
            .iter()
            .all(|e| e["event"] != "tls_rejected" || e["peer"].is_string())
    );
}

#[tokio::test]
async fn a_listener_limited_to_tls13_refuses_tls12_and_tls12_works_elsewhere() {
    let plc = plc().await;
    let env12 = Env::start(plc.addr, Options::default()).await;
    let cert = env12.pki.client("c", Some(HMI));
    let only12 = ztgate::config::TlsVersions {
        tls12: true,
        tls13: false,
    };
    let mut c =
        ztgate::demo::client::connect_tls(env12.addr, env12.pki.config(Some(&cert), only12), None)
            .await
            .expect("TLS 1.2 handshake (Modbus/TCP Security)");
    assert_eq!(read_register(&mut c, 1).await, 1);
    let opened = env12.wait_event("session_opened", |_| true).await;
    assert_eq!(opened["tls_version"], "TLSv1_2");

    let opts = Options {
        listener: "default_service = \"plc-line1\"\ntls_versions = [\"1.3\"]".into(),
        ..Options::default()
    };
    let env13 = Env::start(plc.addr, opts).await;
    let cert = env13.pki.client("c", Some(HMI));
    let r =
        ztgate::demo::client::connect_tls(env13.addr, env13.pki.config(Some(&cert), only12), None)
            .await;
    assert!(r.is_err(), "TLS 1.2 must be refused by a 1.3-only listener");
}

#[tokio::test]
async fn unknown_identity_is_refused_the_service() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let mut c = env.connect("spiffe://plant1/line2/hmi/hmi-09").await;
    assert!(c.request(1, &[3, 0, 0, 0, 1]).await.is_err());
    let denied = env.wait_event("session_denied", |_| true).await;
    assert_eq!(denied["identity"], "spiffe://plant1/line2/hmi/hmi-09");
    assert_eq!(plc.requests(), 0);
}

#[tokio::test]
async fn plc_down_answers_0x0b_promptly_and_the_session_stays_open() {
    let opts = Options {
        service: "connect_timeout = \"30s\"\nresponse_timeout = \"30s\"".into(),
        ..Options::default()
    };
    let env = Env::start(closed_port(), opts).await;
    let mut c = env.connect(HMI).await;
    // RESPONSE_WAIT (10 s) is far below the 30 s timeouts: only a prompt answer passes.
    let r = c.request(1, &[3, 0, 0, 0, 1]).await.expect("response");
    assert_eq!(exception(&r), Some(0x0B));
    let r = c
        .request(1, &[3, 0, 0, 0, 1])
        .await
        .expect("session still open");
    assert_eq!(exception(&r), Some(0x0B));
    let e = env.wait_event("gateway_exception", |_| true).await;
    assert_eq!(e["exception"], 11);
    assert_eq!(e["side"], "upstream");
}

#[tokio::test]
async fn a_plc_that_never_answers_gets_0x0b_within_the_response_timeout() {
    let silent = SilentDevice::start().await;
    let opts = Options {
        service: "response_timeout = \"300ms\"".into(),
        ..Options::default()
    };
    let env = Env::start(silent.addr, opts).await;
    let mut c = env.connect(HMI).await;
    let r = c.request(1, &[3, 0, 0, 0, 1]).await.expect("response");
    assert_eq!(exception(&r), Some(0x0B));
    // Pipelined requests behind the hung one each get their own 0x0B, in order.
    c.send(&[adu(21, 1, &[3, 0, 0, 0, 1]), adu(22, 1, &[4, 0, 0, 0, 1])].concat())
        .await
        .unwrap();
    for (tid, function) in [(21u16, 0x83u8), (22, 0x84)] {
        let f = c.read_frame().await.unwrap().expect("frame");
        assert_eq!(u16::from_be_bytes([f[0], f[1]]), tid);
        assert_eq!(&f[7..], &[function, 0x0B]);
    }
}

#[tokio::test]
async fn framing_errors_close_only_that_session() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let mut survivor = env.connect(HMI).await;
    assert_eq!(read_register(&mut survivor, 0).await, 0);

    let cases: &[(&str, Vec<u8>)] = &[
        ("protocol id 1", vec![0, 1, 0, 1, 0, 6, 1, 3, 0, 0, 0, 1]),
        ("length 0", vec![0, 1, 0, 0, 0, 0, 1]),
        ("length 1", vec![0, 1, 0, 0, 0, 1, 1]),
        ("length 255", vec![0, 1, 0, 0, 0, 0xFF, 1, 3]),
        ("length 0xffff", vec![0, 1, 0, 0, 0xFF, 0xFF, 1, 3]),
        ("truncated FC3", vec![0, 1, 0, 0, 0, 3, 1, 3, 0]),
        (
            "FC6 with a trailing byte",
            vec![0, 1, 0, 0, 0, 7, 1, 6, 0, 100, 0, 1, 9],
        ),
    ];
    for (what, bytes) in cases {
        let mut c = env.connect(HMI).await;
        c.send(bytes).await.unwrap();
        match c.read_frame().await {
            Ok(None) | Err(_) => {}
            Ok(Some(f)) => panic!("{what}: got a frame {f:?} instead of a close"),
        }
        // Every other session keeps working.
        assert_eq!(read_register(&mut survivor, 2).await, 2, "{what}");
    }
    // Each closed session's event may still be on its way.
    let framing = |e: &serde_json::Value| {
        e["event"] == "session_closed" && e["reason"]["kind"] == "framing_error"
    };
    env.wait_until(|all| all.iter().filter(|e| framing(e)).count() >= cases.len())
        .await;
    let all = env.audit().await;
    let details: Vec<&str> = all
        .iter()
        .filter(|e| e["event"] == "session_closed" && e["reason"]["kind"] == "framing_error")
        .map(|e| e["reason"]["detail"].as_str().unwrap())
        .collect();
    assert_eq!(details.len(), cases.len(), "{details:#?}");
    assert!(details.iter().any(|d| d.contains("protocol id")));
    assert!(details.iter().any(|d| d.contains("MBAP length 255")));
    assert_eq!(plc.requests(), cases.len() as u64 + 1);
}

#[tokio::test]
async fn protocol_violations_get_0x03_or_0x02_and_never_reach_the_plc() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let mut c = env.connect(ENGINEER).await;
    let cases: &[(&str, &[u8], u8)] = &[
        ("read quantity 0", &[3, 0, 0, 0, 0], 0x03),
        ("read 126 registers", &[3, 0, 0, 0, 126], 0x03),
        ("read 2001 coils", &[1, 0, 0, 0x07, 0xD1], 0x03),
        ("write 124 registers", &[16, 0, 0, 0, 124, 248], 0x03),
        ("byte count mismatch", &[16, 0, 100, 0, 2, 2, 0, 1], 0x03),
        ("coil value 0x1234", &[5, 0, 1, 0x12, 0x34], 0x03),
        ("address overflow", &[3, 0xFF, 0xFF, 0, 2], 0x02),
        (
            "tokio-modbus crasher",
            &[15, 0, 0, 0x0F, 0x06, 6, 1, 2, 3, 4, 5, 6],
            0x03,
        ),
    ];
    for (what, pdu, code) in cases {
        let r = c
            .request(1, pdu)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r, vec![pdu[0] | 0x80, *code], "{what}");
    }
    assert_eq!(plc.requests(), 0, "nothing malformed may reach the PLC");
    assert_eq!(env.events("protocol_violation").await.len(), cases.len());
}

#[tokio::test]
async fn shields_a_fragile_plc_stack_from_a_frame_that_crashes_its_decoder() {
    let plc = plc().await;
    // FC15 with quantity 0x0F06 but byte count 6: tokio-modbus's request decoder mishandles it.
    let hostile = adu(1, 1, &[15, 0, 0, 0x0F, 0x06, 6, 1, 2, 3, 4, 5, 6]);

    // Directly, the PLC stack does not answer it: its connection dies.
    let mut direct = ztgate::demo::client::ModbusClient::new(
        tokio::net::TcpStream::connect(plc.addr).await.unwrap(),
    );
    direct.send(&hostile).await.unwrap();
    assert!(
        !matches!(direct.read_frame().await, Ok(Some(_))),
        "the PLC stack answered the hostile frame; this test no longer proves anything"
    );

    // Through the gateway, the client gets 0x03 and the PLC keeps serving the same session.
    let env = Env::start(plc.addr, Options::default()).await;
    let mut c = env.connect(ENGINEER).await;
    for _ in 0..3 {
        c.send(&hostile).await.unwrap();
        let f = c
            .read_frame()
            .await
            .unwrap()
            .expect("an exception, not a close");
        assert_eq!(&f[7..], &[0x8F, 0x03]);
        assert_eq!(read_register(&mut c, 9).await, 9);
    }
}

#[tokio::test]
async fn frames_split_into_single_bytes_and_batched_frames_both_work() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let mut c = env.connect(HMI).await;
    // One byte per TLS record.
    for b in adu(77, 1, &[3, 0, 20, 0, 2]) {
        c.send(&[b]).await.unwrap();
    }
    let f = c.read_frame().await.unwrap().unwrap();
    assert_eq!(u16::from_be_bytes([f[0], f[1]]), 77);
    assert_eq!(registers(&f[7..]), vec![20, 21]);
    // Three frames in one record.
    let batch = [
        adu(1, 1, &[3, 0, 1, 0, 1]),
        adu(2, 1, &[3, 0, 2, 0, 1]),
        adu(3, 1, &[3, 0, 3, 0, 1]),
    ]
    .concat();
    c.send(&batch).await.unwrap();
    for tid in 1u16..=3 {
        let f = c.read_frame().await.unwrap().unwrap();
        assert_eq!(u16::from_be_bytes([f[0], f[1]]), tid);
        assert_eq!(registers(&f[7..]), vec![tid]);
    }
}

#[tokio::test]
async fn a_partial_frame_is_closed_after_the_frame_timeout() {
    let plc = plc().await;
    let opts = Options {
        limits: "frame_timeout = \"200ms\"".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect(HMI).await;
    c.send(&adu(1, 1, &[3, 0, 0, 0, 1])[..5]).await.unwrap();
    assert!(matches!(c.read_frame().await, Ok(None) | Err(_)));
    let closed = env.wait_event("session_closed", |_| true).await;
    assert_eq!(closed["reason"]["kind"], "frame_timeout");
}

/// Pipelined requests, allowed and denied mixed, answered in request order.
async fn pipelined_in_order(upstream: std::net::SocketAddr) {
    let env = Env::start(upstream, Options::default()).await;
    let mut c = env.connect(HMI).await;
    let requests = [
        adu(101, 1, &[3, 0, 0, 0, 2]),       // allowed
        adu(102, 1, &[3, 0, 2, 0, 2]),       // allowed
        adu(103, 1, &[6, 0, 5, 0, 1]),       // denied (address)
        adu(104, 1, &[4, 0, 0, 0, 2]),       // allowed
        adu(105, 1, &[5, 0, 1, 0xFF, 0x00]), // denied (function)
        adu(106, 1, &[3, 0, 10, 0, 1]),      // allowed
    ];
    c.send(&requests.concat()).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..requests.len() {
        let f = c.read_frame().await.expect("answer").expect("frame");
        answers.push((u16::from_be_bytes([f[0], f[1]]), f[7..].to_vec()));
    }
    let tids: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(tids, vec![101, 102, 103, 104, 105, 106]);
    assert_eq!(registers(&answers[0].1), vec![0, 1]);
    assert_eq!(registers(&answers[1].1), vec![2, 3]);
    assert_eq!(answers[2].1, vec![0x86, 0x01]);
    assert_eq!(registers(&answers[3].1), vec![1000, 1001]);
    assert_eq!(answers[4].1, vec![0x85, 0x01]);
    assert_eq!(registers(&answers[5].1), vec![10]);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let plc = plc().await;
    pipelined_in_order(plc.addr).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_by_a_plc_that_takes_one_at_a_time() {
    // pymodbus parses one ADU per TCP segment: forwarding the batch as one write would lose
    // every answer but the first.
    let plc = PyModbus::start();
    pipelined_in_order(plc.addr).await;
}

#[tokio::test]
async fn more_than_max_outstanding_requests_get_0x06() {
    let silent = SilentDevice::start().await;
    let opts = Options {
        service: "max_outstanding = 2\nresponse_timeout = \"500ms\"".into(),
        ..Options::default()
    };
    let env = Env::start(silent.addr, opts).await;
    let mut c = env.connect(HMI).await;
    let batch: Vec<u8> = (1u16..=4)
        .flat_map(|t| adu(t, 1, &[3, 0, 0, 0, 1]))
        .collect();
    c.send(&batch).await.unwrap();
    // 3 and 4 are refused at once; 1 and 2 time out at the silent device.
    let mut got = Vec::new();
    for _ in 0..4 {
        let f = c.read_frame().await.unwrap().unwrap();
        got.push((u16::from_be_bytes([f[0], f[1]]), f[8]));
    }
    assert_eq!(got, vec![(3, 0x06), (4, 0x06), (1, 0x0B), (2, 0x0B)]);
}

#[tokio::test]
async fn upstream_connection_limit_answers_0x0a() {
    let plc = plc().await;
    let opts = Options {
        service: "max_upstream_connections = 1".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut first = env.connect(HMI).await;
    assert_eq!(read_register(&mut first, 0).await, 0);
    let mut second = env.connect(HISTORIAN).await;
    let r = second.request(1, &[3, 0, 0, 0, 1]).await.unwrap();
    assert_eq!(exception(&r), Some(0x0A));
    // When the first session ends its slot is free again.
    drop(first);
    env.wait_event("session_closed", |_| true).await;
    let r = second.request(1, &[3, 0, 0, 0, 1]).await.unwrap();
    assert_eq!(registers(&r), vec![0]);
}

#[tokio::test]
async fn a_unit_the_upstream_does_not_serve_answers_0x0a() {
    let plc = plc().await;
    let policy = "[roles]\nr = \"\"\n[[identity]]\nmatch = \"u\"\nroles = [\"r\"]\n[[rule]]\nid = \"any-unit\"\nroles = [\"r\"]\nservices = [\"plc-line1\"]\nmodbus = { functions = [\"read_only\"] }\n";
    let opts = Options {
        service: "units = [1]".into(),
        policies: vec![("p.toml".into(), policy.into())],
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect("u").await;
    assert_eq!(read_register(&mut c, 0).await, 0);
    assert_eq!(
        exception(&c.request(7, &[3, 0, 0, 0, 1]).await.unwrap()),
        Some(0x0A)
    );
    assert_eq!(plc.requests(), 1);
}

#[tokio::test]
async fn broadcast_writes_are_not_forwarded_unless_a_rule_names_unit_0() {
    let plc = plc().await;
    let policy = "[roles]\nr = \"\"\n[[identity]]\nmatch = \"u\"\nroles = [\"r\"]\n[[rule]]\nid = \"all\"\nroles = [\"r\"]\nservices = [\"plc-line1\"]\nmodbus = { functions = [\"read_write\"] }\n";
    let opts = Options {
        policies: vec![("p.toml".into(), policy.into())],
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect("u").await;
    let r = c.request(0, &[6, 0, 1, 0, 99]).await.unwrap();
    assert_eq!(exception(&r), Some(0x01));
    assert_eq!(plc.requests(), 0);
    let d = env.wait_event("request_denied", |_| true).await;
    assert_eq!(d["reason"]["kind"], "broadcast");
}

#[tokio::test]
async fn reload_closes_revoked_session_and_applies_to_open_ones() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let mut hmi = env.connect(HMI).await;
    let mut historian = env.connect(HISTORIAN).await;
    assert_eq!(read_register(&mut hmi, 0).await, 0);
    assert_eq!(read_register(&mut historian, 0).await, 0);

    // New policy: the historian keeps reading; operators lose the PLC entirely.
    let policy = "[roles]\nhistorian = \"\"\noperator = \"\"\n[[identity]]\nmatch = \"historian-01\"\nroles = [\"historian\"]\n[[identity]]\nmatch = \"spiffe://plant1/line1/hmi/*\"\nroles = [\"operator\"]\n[[rule]]\nid = \"h\"\nroles = [\"historian\"]\nservices = [\"plc-line1\"]\nmodbus = { functions = [3], addresses = [\"0-9\"] }\n";
    let main = SourceFile::new(
        "ztgate.toml",
        config_text(env.dir.path(), plc.addr, &Options::default()),
    );
    let config = ztgate::config::Config::from_sources(
        &main,
        &[SourceFile::new("p.toml", policy)],
        env.dir.path(),
    )
    .unwrap();
    env.gateway()
        .reload_policy(ztgate::policy::Policy::compile(config.policy));

    assert!(
        hmi.request(1, &[3, 0, 0, 0, 1]).await.is_err(),
        "revoked session must be closed"
    );
    assert_eq!(read_register(&mut historian, 5).await, 5);
    // ...under the new rule: address 20 was allowed before, not any more.
    assert_eq!(
        exception(&historian.request(1, &[3, 0, 20, 0, 1]).await.unwrap()),
        Some(0x01)
    );
    let closed = env
        .wait_event("session_closed", |e| e["identity"] == HMI)
        .await;
    assert_eq!(closed["reason"]["kind"], "access_revoked");
}

#[tokio::test]
async fn per_identity_session_limit_refuses_the_extra_session() {
    let plc = plc().await;
    let opts = Options {
        limits: "max_sessions_per_identity = 1".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut one = env.connect(HMI).await;
    assert_eq!(read_register(&mut one, 0).await, 0);
    let mut two = env.connect(HMI).await;
    assert!(two.request(1, &[3, 0, 0, 0, 1]).await.is_err());
    let d = env.wait_event("session_denied", |_| true).await;
    assert!(
        d["reason"]
            .as_str()
            .unwrap()
            .contains("max_sessions_per_identity")
    );
    // Another identity is not affected.
    let mut other = env.connect(HISTORIAN).await;
    assert_eq!(read_register(&mut other, 0).await, 0);
}

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_is_dropped_after_the_timeout() {
    let plc = plc().await;
    let opts = Options {
        handshake_timeout: "300ms".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    use tokio::io::AsyncReadExt;
    let mut idle = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let mut buf = [0u8; 16];
    // The gateway closes the socket: read returns EOF (or a reset), well before 10 s.
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed by the handshake timeout");
    assert!(matches!(read, Ok(0) | Err(_)));
    let e = env.wait_event("tls_rejected", |_| true).await;
    assert_eq!(e["reason"], "TLS handshake timed out");
}

#[tokio::test]
async fn max_sessions_refuses_connections_beyond_the_limit() {
    let plc = plc().await;
    let opts = Options {
        limits: "max_sessions = 2".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut a = env.connect(HMI).await;
    let mut b = env.connect(HISTORIAN).await;
    assert_eq!(read_register(&mut a, 0).await, 0);
    assert_eq!(read_register(&mut b, 0).await, 0);
    let third = env.try_connect(ENGINEER).await;
    let refused = match third {
        Err(_) => true,
        Ok(mut c) => c.request(1, &[3, 0, 0, 0, 1]).await.is_err(),
    };
    assert!(
        refused,
        "a third session must be refused at max_sessions = 2"
    );
    let e = env.wait_event("session_denied", |_| true).await;
    assert_eq!(e["identity"], ENGINEER);
    assert!(e["reason"].as_str().unwrap().contains("max_sessions (2)"));
    // A slot frees when a session ends.
    drop(a);
    env.wait_event("session_closed", |_| true).await;
    let mut c = env.connect(ENGINEER).await;
    assert_eq!(read_register(&mut c, 0).await, 0);
}

#[tokio::test]
async fn an_idle_session_is_closed_after_the_idle_timeout() {
    let plc = plc().await;
    let opts = Options {
        limits: "idle_timeout = \"300ms\"".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect(HMI).await;
    assert_eq!(read_register(&mut c, 0).await, 0);
    assert!(matches!(c.read_frame().await, Ok(None) | Err(_)));
    let closed = env.wait_event("session_closed", |_| true).await;
    assert_eq!(closed["reason"]["kind"], "idle_timeout");
    assert_eq!(closed["requests"], 1);
    assert_eq!(closed["allowed"], 1);
}

/// A misbehaving device: answers every request twice, the second time with a transaction id
/// nobody asked for.
async fn echoing_device() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 12];
                while s.read_exact(&mut buf).await.is_ok() {
                    // FC3 quantity 1 → 0x1234, then the same with transaction id + 1000.
                    let tid = u16::from_be_bytes([buf[0], buf[1]]);
                    let mut out = adu(tid, buf[6], &[3, 2, 0x12, 0x34]);
                    out.extend(adu(tid.wrapping_add(1000), buf[6], &[3, 2, 0x56, 0x78]));
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_response_that_matches_no_request_is_dropped_audited_and_resets_the_upstream() {
    let (device, task) = echoing_device().await;
    let env = Env::start(device, Options::default()).await;
    let mut c = env.connect(HMI).await;
    for _ in 0..3 {
        let tid = c.next_transaction();
        c.send(&adu(tid, 1, &[3, 0, 0, 0, 1])).await.unwrap();
        let f = c.read_frame().await.unwrap().unwrap();
        assert_eq!(
            u16::from_be_bytes([f[0], f[1]]),
            tid,
            "only the matching response reaches the client"
        );
        assert_eq!(&f[7..], &[3, 2, 0x12, 0x34]);
    }
    env.wait_until(|all| {
        all.iter()
            .filter(|e| e["event"] == "unmatched_response")
            .count()
            == 3
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn a_modbus_tcp_security_client_gets_tls12_with_ecdhe_ecdsa_aes128_gcm_sha256() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    let cert = env.pki.client("c", Some(HMI));
    // The one suite the Modbus/TCP Security spec requires for ECDSA keys, and only TLS 1.2.
    let suite = rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..rustls::crypto::ring::default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(env.pki.ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(cert.key_pem.expose().as_bytes()).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let name = ServerName::IpAddress(env.addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake with the Modbus/TCP Security suite");
    assert_eq!(tls.get_ref().1.negotiated_cipher_suite(), Some(suite));
    let mut c = ztgate::demo::client::ModbusClient::new(tls);
    assert_eq!(read_register(&mut c, 4).await, 4);
}

/// A device that answers each request twice: the right answer, then the same bytes again a
/// little later (a retrying serial gateway). The copy must never answer a later request.
async fn duplicating_device() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rx, tx) = s.into_split();
                let tx = std::sync::Arc::new(tokio::sync::Mutex::new(tx));
                let mut buf = [0u8; 12];
                while rx.read_exact(&mut buf).await.is_ok() {
                    // FC3 quantity 1 → the address as the value.
                    let tid = u16::from_be_bytes([buf[0], buf[1]]);
                    let answer = adu(tid, buf[6], &[3, 2, buf[8], buf[9]]);
                    if tx.lock().await.write_all(&answer).await.is_err() {
                        return;
                    }
                    let tx = tx.clone();
                    // The duplicate goes out once the next request is in (or after 200 ms).
                    tokio::spawn(async move {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        let _ = tx.lock().await.write_all(&answer).await;
                    });
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_stale_duplicate_response_is_never_handed_to_a_later_request() {
    let (device, task) = duplicating_device().await;
    let opts = Options {
        service: "response_timeout = \"2s\"".into(),
        ..Options::default()
    };
    let env = Env::start(device, opts).await;
    let mut c = env.connect(HMI).await;
    // Same transaction id every time, as simple clients do; different addresses.
    for address in [10u8, 20, 30] {
        c.send(&adu(0, 1, &[3, 0, address, 0, 1])).await.unwrap();
        let f = c.read_frame().await.unwrap().unwrap();
        let pdu = &f[7..];
        // Either the right value, or 0x0B if the duplicate reset the connection first —
        // never another request's value.
        assert!(
            pdu == [3, 2, 0, address] || pdu == [0x83, 0x0B],
            "address {address}: got {pdu:?}"
        );
        // Let the duplicate arrive while nothing is in flight.
        env.wait_until(|all| {
            all.iter()
                .filter(|e| e["event"] == "unmatched_response")
                .count()
                >= usize::from(address / 10)
        })
        .await;
    }
    task.abort();
}

#[tokio::test]
async fn an_idle_upstream_connection_is_released_and_reopened_on_demand() {
    let plc = plc().await;
    let opts = Options {
        service: "max_upstream_connections = 1\nupstream_idle_timeout = \"200ms\"".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut a = env.connect(HMI).await;
    assert_eq!(read_register(&mut a, 0).await, 0);
    // The only upstream slot is free again once a's connection has idled out, while a stays.
    let mut b = env.connect(HISTORIAN).await;
    let mut served = false;
    for _ in 0..50 {
        let r = b.request(1, &[3, 0, 1, 0, 1]).await.unwrap();
        if exception(&r).is_none() {
            assert_eq!(registers(&r), vec![1]);
            served = true;
            break;
        }
        assert_eq!(exception(&r), Some(0x0A));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(served, "the idle upstream connection was never released");
    // b now holds the slot; a is refused until b's connection idles out, then served again.
    let mut a_served = false;
    for _ in 0..50 {
        let r = a.request(1, &[3, 0, 2, 0, 1]).await.unwrap();
        if exception(&r).is_none() {
            a_served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(a_served);
}

#[tokio::test]
async fn an_allowed_unit_0_write_is_forwarded_and_a_silent_broadcast_keeps_the_connection() {
    // A TCP device answers unit 0 like any unit: the answer is relayed.
    let plc = plc().await;
    let policy = "[roles]\nr = \"\"\n[[identity]]\nmatch = \"u\"\nroles = [\"r\"]\n[[rule]]\nid = \"bcast\"\nroles = [\"r\"]\nservices = [\"plc-line1\"]\nmodbus = { functions = [\"read_write\"], units = [0, 1] }\n";
    let opts = Options {
        policies: vec![("p.toml".into(), policy.into())],
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect("u").await;
    assert_eq!(
        c.request(0, &[6, 0, 50, 0, 77]).await.unwrap(),
        vec![6, 0, 50, 0, 77]
    );
    assert_eq!(read_register(&mut c, 50).await, 77);
    let w = env.wait_event("write_allowed", |_| true).await;
    assert_eq!(w["request"]["unit"], 0);

    // A serial gateway never answers a broadcast: 0x0B after the timeout, and the same
    // upstream connection goes on serving unit 1.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let device = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 12];
                while s.read_exact(&mut buf).await.is_ok() {
                    if buf[6] != 0 && s.write_all(&buf).await.is_err() {
                        return; // FC6 echo for units other than 0
                    }
                }
            });
        }
    });
    let opts = Options {
        policies: vec![("p.toml".into(), policy.into())],
        service: "response_timeout = \"300ms\"".into(),
        ..Options::default()
    };
    let env = Env::start(device, opts).await;
    let mut c = env.connect("u").await;
    assert_eq!(
        exception(&c.request(0, &[6, 0, 50, 0, 77]).await.unwrap()),
        Some(0x0B)
    );
    assert_eq!(
        c.request(1, &[6, 0, 51, 0, 78]).await.unwrap(),
        vec![6, 0, 51, 0, 78]
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    task.abort();
}

#[tokio::test]
async fn a_busy_client_whose_reads_end_mid_frame_is_not_closed_by_the_frame_timeout() {
    let plc = plc().await;
    let opts = Options {
        limits: "frame_timeout = \"300ms\"".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    let mut c = env.connect(HMI).await;
    // Every write completes one frame and starts the next: the buffer is never empty.
    let frames: Vec<u8> = (1u16..=12)
        .flat_map(|t| adu(t, 1, &[3, 0, 0, 0, 1]))
        .collect();
    c.send(&frames[..6]).await.unwrap();
    let mut sent = 6;
    let mut answered = 0u16;
    let started = std::time::Instant::now();
    while sent < frames.len() {
        let next = (sent + 12).min(frames.len());
        c.send(&frames[sent..next]).await.unwrap();
        sent = next;
        let f = c
            .read_frame()
            .await
            .unwrap()
            .expect("session must stay open");
        answered += 1;
        assert_eq!(u16::from_be_bytes([f[0], f[1]]), answered);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        started.elapsed() > std::time::Duration::from_millis(300),
        "the test must outlast the frame timeout"
    );
}

#[tokio::test]
async fn handshakes_in_progress_cannot_take_the_verified_sessions_slots() {
    let plc = plc().await;
    let opts = Options {
        limits: "max_handshakes = 2\nmax_sessions = 2".into(),
        ..Options::default()
    };
    let env = Env::start(plc.addr, opts).await;
    // Two silent TCP connections fill the handshake budget...
    let _s1 = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    let _s2 = tokio::net::TcpStream::connect(env.addr).await.unwrap();
    // Readiness: both are accepted and counted as handshakes in progress.
    for _ in 0..500 {
        if env.gateway().shared.active_sessions() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(env.gateway().shared.active_sessions(), 2);
    let third = env.try_connect(HMI).await;
    let refused = match third {
        Err(_) => true,
        Ok(mut c) => c.request(1, &[3, 0, 0, 0, 1]).await.is_err(),
    };
    assert!(
        refused,
        "a third handshake must be refused at max_handshakes = 2"
    );
    let e = env
        .wait_event("tls_rejected", |e| {
            e["reason"].as_str().unwrap().contains("max_handshakes")
        })
        .await;
    assert!(e["reason"].as_str().unwrap().contains("max_handshakes (2)"));
    // ...but they never count as sessions: once they are gone, verified sessions get in.
    drop(_s1);
    drop(_s2);
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(mut c) = env.try_connect(HMI).await
            && let Ok(r) = c.request(1, &[3, 0, 0, 0, 1]).await
        {
            ok = Some(r);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        registers(&ok.expect("served after the silent peers left")),
        vec![0]
    );
}

#[tokio::test]
async fn a_session_ends_when_its_client_certificate_expires() {
    let plc = plc().await;
    let env = Env::start(plc.addr, Options::default()).await;
    // Valid for two more seconds.
    let mut spec = ztgate::pki::CertSpec::new("c", 1).with_uri(HMI);
    spec.not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let cert = env.pki.ca.issue_client(&spec).unwrap();
    let mut c =
        ztgate::demo::client::connect_tls(env.addr, env.pki.config(Some(&cert), BOTH), None)
            .await
            .unwrap();
    assert_eq!(read_register(&mut c, 3).await, 3);
    // The gateway closes the session at expiry, within the client's 10 s wait.
    assert!(matches!(c.read_frame().await, Ok(None) | Err(_)));
    let closed = env.wait_event("session_closed", |_| true).await;
    assert_eq!(closed["reason"]["kind"], "certificate_expired");
}
