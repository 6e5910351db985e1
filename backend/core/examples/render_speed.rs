fn main() {
    let w = unike_core::world::World::generate(0);
    let t = std::time::Instant::now();
    for i in 0..2000u64 {
        let _ = w.render_entity((i % 200) as usize, unike_core::world::Pool::Train, i);
    }
    println!("render {:.3} ms/img", t.elapsed().as_secs_f64() * 1e3 / 2000.0);
    let ip = unike_core::model::ImageProcessor::from_json_str(unike_core::train::WORLD_PREPROCESSOR).unwrap();
    let img = w.render_entity(0, unike_core::world::Pool::Train, 0);
    let t = std::time::Instant::now();
    for _ in 0..2000 {
        let _ = ip.preprocess(&img, &candle_core::Device::Cpu).unwrap();
    }
    println!("preprocess {:.3} ms/img", t.elapsed().as_secs_f64() * 1e3 / 2000.0);
}
