//! `dns-node` daemon entry point (skeleton; the daemon lands with its own issue).

fn main() {
    eprintln!("dns-node: not implemented yet");
    std::process::exit(2);
}
