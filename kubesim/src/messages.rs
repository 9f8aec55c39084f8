//! Realistic application log messages: access logs, JSON events, Java and
//! Go style lines, stack-trace fragments. About 180 bytes on average and,
//! like real logs, roughly 10x compressible (repeated structure, varying
//! numbers, ids and paths).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const PATHS: &[&str] = &[
    "/api/v1/orders",
    "/api/v1/users",
    "/api/v2/cart/items",
    "/healthz",
    "/metrics",
    "/api/v1/payments/authorize",
    "/static/js/app.bundle.js",
    "/login",
    "/api/v1/search",
    "/api/v1/inventory/sku",
    "/graphql",
    "/api/v1/sessions/refresh",
];
const METHODS: &[&str] = &["GET", "GET", "GET", "POST", "PUT", "DELETE", "PATCH"];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "curl/8.5.0", "kube-probe/1.29", "Go-http-client/2.0", "okhttp/4.12.0", "python-requests/2.31.0",
];
const SERVICES: &[&str] = &[
    "checkout",
    "inventory",
    "payments",
    "frontend",
    "auth",
    "search",
    "shipping",
];
const LEVELS: &[&str] = &["INFO", "INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR"];
const CLASSES: &[&str] = &[
    "com.example.orders.OrderService",
    "org.springframework.web.servlet.DispatcherServlet",
    "com.zaxxer.hikari.pool.HikariPool",
    "io.grpc.netty.NettyServerHandler",
    "org.apache.kafka.clients.consumer.internals.ConsumerCoordinator",
];
const EVENTS: &[&str] = &[
    "request completed",
    "cache miss, loading from database",
    "retrying upstream call",
    "connection pool exhausted, waiting for a free connection",
    "user session refreshed",
    "message published to topic",
    "slow query detected",
    "payment authorized",
];

/// A deterministic generator of log messages.
pub struct Messages {
    rng: SmallRng,
    seq: u64,
}

impl Messages {
    /// A generator seeded with `seed` (same seed, same messages).
    pub fn new(seed: u64) -> Self {
        Messages {
            rng: SmallRng::seed_from_u64(seed),
            seq: 0,
        }
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.rng.random_range(0..xs.len())]
    }

    /// A value from a small pool, as real traffic repeats its clients,
    /// sizes and durations.
    fn pooled(&mut self, pool: u32, scale: u32) -> u32 {
        let r: f64 = self.rng.random();
        // Skewed towards small indexes: a few values dominate.
        ((r * r * pool as f64) as u32) * scale
    }

    fn hex(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from_digit(self.rng.random_range(0..16), 16).unwrap_or('0'))
            .collect()
    }

    /// The next message.
    pub fn next_message(&mut self) -> String {
        self.seq += 1;
        match self.rng.random_range(0..5) {
            0 => {
                let ip = format!("10.{}.{}.{}", self.pooled(3, 1), self.pooled(8, 7), self.pooled(40, 3) + 1);
                let status = [200, 200, 200, 200, 200, 201, 204, 304, 404, 500][self.rng.random_range(0..10)];
                format!(
                    "{ip} - - [{}] \"{} {}?page={} HTTP/1.1\" {status} {} \"-\" \"{}\" rt={}ms",
                    self.seq / 50,
                    self.pick(METHODS), self.pick(PATHS), self.pooled(10, 1) + 1,
                    self.pooled(30, 512) + 312, self.pick(AGENTS), self.pooled(40, 5) + 1
                )
            }
            1 => {
                let trace = self.hex(8);
                format!(
                    r#"{{"level":"{}","service":"{}","msg":"{}","trace_id":"{trace}","duration_ms":{},"user_id":{}}}"#,
                    self.pick(LEVELS).to_lowercase(), self.pick(SERVICES), self.pick(EVENTS),
                    self.pooled(50, 10), 1000 + self.pooled(200, 1)
                )
            }
            2 => format!(
                "{} [{}] {} - {} (order={} items={} tenant=t-{})",
                self.pick(LEVELS), format_args!("http-nio-8080-exec-{}", self.pooled(16, 1) + 1),
                self.pick(CLASSES), self.pick(EVENTS), 100_000 + self.seq,
                self.pooled(8, 1) + 1, self.pooled(10, 1) + 1
            ),
            3 => {
                let seq = self.seq;
                format!(
                    "level={} seq={} caller={}.go:{} msg=\"{}\" peer=10.0.{}.{}:{} bytes={}",
                    self.pick(LEVELS).to_lowercase(), seq / 16, self.pick(SERVICES), 100 + self.pooled(12, 17),
                    self.pick(EVENTS), self.pooled(4, 1), self.pooled(30, 1) + 1,
                    8080 + self.pooled(4, 1000), self.pooled(40, 128)
                )
            }
            _ => format!(
                "\tat {}.handle({}.java:{}) ~[app.jar:1.4.2] caused by java.net.SocketTimeoutException: Read timed out after {}ms",
                self.pick(CLASSES), self.pick(SERVICES), 100 + self.pooled(10, 37),
                1000 * (self.pooled(30, 1) + 1)
            ),
        }
    }
}

impl Messages {
    /// A Java stack trace as a logger prints it after an error line: the
    /// error line, the exception, frames, a cause and `... N more`.
    pub fn java_trace(&mut self) -> Vec<String> {
        let order = self.hex(8);
        let mut out = vec![
            format!(
                "ERROR [{}] payment failed order={order}",
                self.pick(SERVICES)
            ),
            format!("java.lang.IllegalStateException: payment declined for order {order}"),
        ];
        let n = 3 + self.rng.random_range(0..4);
        for i in 0..n {
            out.push(format!(
                "\tat com.example.checkout.{}.pay(Checkout.java:{})",
                self.pick(CLASSES).rsplit('.').next().unwrap_or("Checkout"),
                40 + i * 7
            ));
        }
        out.push(format!(
            "Caused by: java.net.SocketTimeoutException: Read timed out after {}ms",
            1000 * (self.pooled(30, 1) + 1)
        ));
        out.push(
            "\tat java.base/java.net.SocketInputStream.read(SocketInputStream.java:183)".into(),
        );
        out.push(format!("\t... {} more", n));
        out
    }

    /// A Python traceback as the interpreter prints it.
    pub fn python_trace(&mut self) -> Vec<String> {
        let key = self.hex(6);
        vec![
            "Traceback (most recent call last):".into(),
            "  File \"/app/server.py\", line 88, in handle".into(),
            "    cart = load_cart(request)".into(),
            "  File \"/app/cart.py\", line 21, in load_cart".into(),
            format!("    return CARTS[{key:?}]"),
            format!("KeyError: '{key}'"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_deterministic_and_about_180_bytes() {
        let mut a = Messages::new(7);
        let mut b = Messages::new(7);
        let mut total = 0;
        for _ in 0..1000 {
            let m = a.next_message();
            assert_eq!(m, b.next_message());
            total += m.len();
        }
        let avg = total / 1000;
        assert!((120..=240).contains(&avg), "average {avg}");
    }
}
