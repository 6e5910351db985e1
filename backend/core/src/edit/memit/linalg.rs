//! The small dense linear algebra of the closed-form updates, in f64 on the CPU: square solves (LU with partial
//! pivoting) and the eigen-decomposition of a symmetric matrix (cyclic Jacobi). Matrices are row-major `Vec<f64>`.
//! Sizes are the FFN's intermediate width (512 for the shipped model); a 7B model's 11008 wants a GPU solver.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// A row-major `rows × cols` f64 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: vec![0.0; rows * cols] }
    }

    pub fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    /// A 2-D tensor of any float dtype.
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let (rows, cols) = t.dims2()?;
        let data = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(Self { rows, cols, data })
    }

    /// A column vector of a 1-D tensor.
    pub fn column(t: &Tensor) -> Result<Self> {
        let data = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        Ok(Self { rows: data.len(), cols: 1, data })
    }

    /// The matrix as an f32 tensor `(rows, cols)`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self.data.iter().map(|&x| x as f32).collect();
        Ok(Tensor::from_vec(v, (self.rows, self.cols), device)?)
    }

    pub fn at(&self, r: usize, c: usize) -> f64 {
        self.data[r * self.cols + c]
    }

    pub fn transpose(&self) -> Self {
        let mut t = Self::zeros(self.cols, self.rows);
        for r in 0..self.rows {
            for c in 0..self.cols {
                t.data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        t
    }

    /// `self · other`.
    pub fn matmul(&self, other: &Mat) -> Result<Mat> {
        if self.cols != other.rows {
            return Err(Error::Invalid(format!(
                "matmul of {}x{} and {}x{}",
                self.rows, self.cols, other.rows, other.cols
            )));
        }
        let mut out = Self::zeros(self.rows, other.cols);
        for r in 0..self.rows {
            let row = &mut out.data[r * other.cols..(r + 1) * other.cols];
            for k in 0..self.cols {
                let a = self.data[r * self.cols + k];
                if a == 0.0 {
                    continue;
                }
                let orow = &other.data[k * other.cols..(k + 1) * other.cols];
                for (o, b) in row.iter_mut().zip(orow) {
                    *o += a * b;
                }
            }
        }
        Ok(out)
    }

    /// `a · self + b · other`, elementwise.
    pub fn combine(&self, a: f64, other: &Mat, b: f64) -> Result<Mat> {
        if (self.rows, self.cols) != (other.rows, other.cols) {
            return Err(Error::Invalid("combining matrices of different shapes".into()));
        }
        let data = self.data.iter().zip(&other.data).map(|(x, y)| a * x + b * y).collect();
        Ok(Mat { rows: self.rows, cols: self.cols, data })
    }

    /// Mean of the diagonal (a square matrix's scale).
    pub fn mean_diagonal(&self) -> f64 {
        let n = self.rows.min(self.cols).max(1);
        (0..self.rows.min(self.cols)).map(|i| self.at(i, i)).sum::<f64>() / n as f64
    }
}

/// `X` with `A X = B`, for a square `A (n, n)` and `B (n, m)`: LU with partial pivoting. A (numerically) singular `A`
/// is an error.
pub fn solve(a: &Mat, b: &Mat) -> Result<Mat> {
    let n = a.rows;
    if a.cols != n || b.rows != n {
        return Err(Error::Invalid(format!("solve of {}x{} with {}x{}", a.rows, a.cols, b.rows, b.cols)));
    }
    let m = b.cols;
    let mut lu = a.data.clone();
    let mut x = b.data.clone();
    let scale = lu.iter().fold(0.0f64, |s, v| s.max(v.abs())).max(f64::MIN_POSITIVE);
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| lu[i * n + col].abs().total_cmp(&lu[j * n + col].abs())).unwrap_or(col);
        if lu[pivot * n + col].abs() <= scale * 1e-13 {
            return Err(Error::Invalid(format!("the {n}x{n} system of the update is singular")));
        }
        if pivot != col {
            for k in 0..n {
                lu.swap(col * n + k, pivot * n + k);
            }
            for k in 0..m {
                x.swap(col * m + k, pivot * m + k);
            }
        }
        let p = lu[col * n + col];
        for r in col + 1..n {
            let f = lu[r * n + col] / p;
            if f == 0.0 {
                continue;
            }
            for k in col..n {
                lu[r * n + k] -= f * lu[col * n + k];
            }
            for k in 0..m {
                x[r * m + k] -= f * x[col * m + k];
            }
        }
    }
    for col in (0..n).rev() {
        let p = lu[col * n + col];
        for k in 0..m {
            let mut s = x[col * m + k];
            for j in col + 1..n {
                s -= lu[col * n + j] * x[j * m + k];
            }
            x[col * m + k] = s / p;
        }
    }
    Ok(Mat { rows: n, cols: m, data: x })
}

/// Eigenvalues (ascending) and eigenvectors (the columns of the returned matrix, in the same order) of a symmetric
/// `a (n, n)`, by cyclic Jacobi rotations until the off-diagonal mass is below `1e-12` of the total.
pub fn symmetric_eigen(a: &Mat) -> Result<(Vec<f64>, Mat)> {
    let n = a.rows;
    if a.cols != n {
        return Err(Error::Invalid("eigen-decomposition of a non-square matrix".into()));
    }
    let mut m = a.data.clone();
    // Symmetrise what rounding left.
    for i in 0..n {
        for j in i + 1..n {
            let s = 0.5 * (m[i * n + j] + m[j * n + i]);
            m[i * n + j] = s;
            m[j * n + i] = s;
        }
    }
    let mut v = Mat::identity(n).data;
    let total: f64 = m.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
    for _sweep in 0..60 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j].powi(2))
            .sum();
        if off <= total * 1e-24 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // Rows/columns p and q of m.
                for k in 0..n {
                    let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                    m[k * n + p] = c * mkp - s * mkq;
                    m[k * n + q] = s * mkp + c * mkq;
                }
                for k in 0..n {
                    let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                    m[p * n + k] = c * mpk - s * mqk;
                    m[q * n + k] = s * mpk + c * mqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| m[i * n + i].total_cmp(&m[j * n + j]));
    let values = order.iter().map(|&i| m[i * n + i]).collect();
    let mut vectors = Mat::zeros(n, n);
    for (new, &old) in order.iter().enumerate() {
        for k in 0..n {
            vectors.data[k * n + new] = v[k * n + old];
        }
    }
    Ok((values, vectors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, m: usize, seed: u64) -> Mat {
        let mut s = seed;
        let data = (0..n * m)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            })
            .collect();
        Mat { rows: n, cols: m, data }
    }

    #[test]
    fn solve_inverts_a_product() {
        let a = random(7, 7, 1).combine(1.0, &Mat::identity(7), 3.0).unwrap();
        let x = random(7, 3, 2);
        let b = a.matmul(&x).unwrap();
        let got = solve(&a, &b).unwrap();
        let err = got.data.iter().zip(&x.data).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(err < 1e-10, "{err}");
        assert!(solve(&Mat::zeros(3, 3), &Mat::zeros(3, 1)).is_err(), "a singular system is an error");
    }

    #[test]
    fn eigen_reconstructs_a_symmetric_matrix() {
        let r = random(9, 5, 3);
        let a = r.matmul(&r.transpose()).unwrap(); // rank 5: four eigenvalues ~0
        let (values, vectors) = symmetric_eigen(&a).unwrap();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
        assert!(values[..4].iter().all(|v| v.abs() < 1e-10), "{values:?}");
        let mut diag = Mat::zeros(9, 9);
        for (i, v) in values.iter().enumerate() {
            diag.data[i * 9 + i] = *v;
        }
        let back = vectors.matmul(&diag).unwrap().matmul(&vectors.transpose()).unwrap();
        let err = back.data.iter().zip(&a.data).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(err < 1e-10, "{err}");
        let gram = vectors.transpose().matmul(&vectors).unwrap();
        let err = gram.data.iter().zip(&Mat::identity(9).data).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
        assert!(err < 1e-10, "orthonormal: {err}");
    }
}
