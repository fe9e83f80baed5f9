fn main() {
    println!("cuda: {}", mmboundary::runtime::cuda_available());
}
