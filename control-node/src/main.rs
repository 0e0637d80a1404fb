//! `control-node` daemon entry point (skeleton; the daemon lands with its own issue).

fn main() {
    eprintln!("control-node: not implemented yet");
    std::process::exit(2);
}
