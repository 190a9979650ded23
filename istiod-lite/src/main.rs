fn main() {
    eprintln!("istiod-lite: not wired yet");
    std::process::exit(2);
}
