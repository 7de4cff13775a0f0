use tests::lab::Lab;

#[test]
fn programs_pass_the_verifier() {
    let _lab = Lab::new().expect("loading and verifying xdp_lb, xdp_decap, xdp_floor");
}
