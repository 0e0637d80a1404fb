//! `vrouter-agent` daemon entry point (skeleton; the daemon lands with its own issue).

fn main() {
    eprintln!("vrouter-agent: not implemented yet");
    std::process::exit(2);
}
