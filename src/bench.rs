//! `wsgate bench`: a load generator for sizing a deployment.

/// Arguments of `wsgate bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Gateway URL, e.g. wss://localhost:8443/ws
    #[arg(long)]
    pub url: String,
}

pub fn main(_args: BenchArgs) -> i32 {
    eprintln!("wsgate bench: not available yet");
    2
}
