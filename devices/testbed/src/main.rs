mod cache;
mod steps;
fn main() {}
