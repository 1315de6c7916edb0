/* ----------------------------------------------------------------------
   snapqeq pair style: a CENT charge-equilibration neural-network potential.

   Per step:
     1. B_i, the SNAP bispectrum of every local atom (kernel/sna.cpp, the same C++ kernel
        as the snapqeq Python package), from the full neighbour list trimmed to the
        bispectrum cutoff; the kernel workspace of every atom (U per neighbour, Z) is kept
        for step 5 while it fits in a memory budget;
     2. chi_i = NN(B_i) with the TorchScript model (libtorch), autograd graph kept;
     3. the global charge equilibration  min_q U(q)  s.t.  sum q = Q  with
        U = sum_i [chi_i q_i + J_i q_i^2 / 2] + E_es(q)  (Gaussian charges; free
        boundaries or Ewald with the uniform background of charged cells) by projected
        preconditioned conjugate gradients (kernel/electrostatics.cpp, shared with the
        Python package; collectives through snapqeq_mpi.h).  Periodic cells: the real-space
        pairs come from the full neighbour list, whose cutoff is the Ewald real-space
        cutoff (ghost atoms mapped to charge-equilibration indices by atom ID; each pair
        once over all ranks), the reciprocal sum from per-rank partial structure factors;
        clusters: all pairs, split between the ranks.
        Charge vectors are replicated on every rank, warm-started by extrapolating the
        solutions of the last steps;
     4. E = sum_i E0_i + U(q), per-atom energy E0_i + chi_i q_i + J_i q_i^2/2 + q_i phi_i/2;
     5. forces (charges are variational, Hellmann-Feynman):
          F_k = -dE_es/dr_k|_q - sum_i q_i dchi_i/dr_k,
        the second term by the adjoint bispectrum method: beta_i = q_i dchi_i/dB_i from
        autograd, Y = sum beta Z (SNA::compute_yi), dE_i/dr_ij per neighbour
        (SNA::compute_deidrj), +to j and -to i; ghost forces go back by reverse comm;
     6. optional short-range network: E += sum_i E_short(B_i, q_i); the charges are then
        not variational for E, which costs one more (adjoint) solve with the same matrix
        (SPEC section 5): A mu = -dE_short/dq on sum mu = 0, beta_i gets mu_i dchi_i/dB_i +
        dE_short_i/dB_i, the electrostatic force gets the bilinear term -mu^T (dA/dr) q.
   A committee model file (snapqeq.training.export.export_committee): steps 2-6 for every member
   (its own chi, hardness, E0, charges, adjoint), step 1 and the electrostatics set-up
   once; energies, forces, virials and per-atom outputs are tallied with weight 1/n, each
   member's forces also into an array of its own (ghost parts summed by a reverse
   communication of this style) for the per-atom force std; energy std from the reduced
   member energies (snapqeq.models.committee.committee_statistics).
------------------------------------------------------------------------- */

#include "pair_snapqeq.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "exceptions.h"
#include "force.h"
#include "memory.h"
#include "modify.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include "nlohmann/json.hpp"    // bundled with LAMMPS (namespace nlohmann_lmp)

#include "compute_snapqeq_atom.h"
#include "electrostatics.h"
#include "sna.h"
#include "snapqeq_elements.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/script.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

using namespace LAMMPS_NS;
// insertion-ordered: the order of the descriptor's radii is the element-block order of
// chem (inside LAMMPS_NS, plain `json` would be LAMMPS' own, key-sorted, type)
using OrderedJson = nlohmann_lmp::ordered_json;
using SortedJson = nlohmann_lmp::basic_json<>;

namespace {

constexpr int kFormatVersion = 1;    // model file format this plugin reads (SPEC section 7)
constexpr const char *kFormat = "snapqeq-model";
constexpr const char *kMetadataFile = "snapqeq.json";
constexpr int kMaxWarnings = 5;
// the end of every message with which the guard stops a run (snapqeq.models.guard.STOP_HINT)
const std::string kGuardStopHint = "; check the structure, or set guard to warn to go on "
                                   "with a warning, or retrain with such data";
// Bispectrum workspaces kept between the descriptor and the force pass, per rank; atoms
// beyond the budget get U and Z computed a second time instead.
constexpr double kCacheBytes = 1024.0 * 1024.0 * 1024.0;

// bytes of one kept bispectrum workspace with nnbr neighbours: U of every neighbour, the
// summed U, Y, dU (idxu complex numbers each) and Z (idxz); layouts of kernel/sna.cpp
double workspace_bytes(int twojmax, int nelements, int nnbr)
{
  double idxu = 0.0, idxz = 0.0;
  for (int j = 0; j <= twojmax; ++j) idxu += (j + 1) * (j + 1);
  for (int j1 = 0; j1 <= twojmax; ++j1)
    for (int j2 = 0; j2 <= j1; ++j2)
      for (int j = j1 - j2; j <= std::min(twojmax, j1 + j2); j += 2) idxz += (j / 2 + 1) * (j + 1);
  const double ne = nelements;
  return 16.0 * (idxu * (nnbr + 2.0 * ne + 3.0) + idxz * ne * ne) + 8.0 * nnbr + 512.0;
}

// the message of an exception, without the C++ backtrace libtorch appends to its own
std::string message_of(const std::exception &e)
{
  if (const auto *c = dynamic_cast<const c10::Error *>(&e)) return c->what_without_backtrace();
  return e.what();
}

std::string join(const std::vector<std::string> &v)
{
  std::string s;
  for (const auto &e : v) s += (s.empty() ? "" : " ") + e;
  return s;
}

// every key of the metadata record (python/snapqeq/io/model_file.schema.json, which defines
// the record; tests/test_export.py checks that this list equals the schema's): the plugin
// applies no defaults, a missing key is an error naming it
const std::vector<std::string> kRequiredKeys = {
    "format", "format_version", "snapqeq_version", "elements", "descriptor", "hardness",
    "widths", "e0", "units", "has_short_range", "min_distances", "descriptor_range",
    "total_charge_range", "guard", "olcao", "committee", "members"};

// a key the metadata must have: its absence throws, naming the key by its path
struct MissingKey : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const OrderedJson &need(const OrderedJson &obj, const std::string &key, const std::string &where)
{
  if (!obj.is_object()) throw std::runtime_error(where + " is not a JSON object");
  if (!obj.contains(key)) throw MissingKey(where.empty() ? key : where + "." + key);
  return obj[key];
}

// one bispectrum entry of the metadata (snapqeq.Bispectrum.to_dict) for the model's elements;
// every key is required (no defaults: the writer emits them all).  ``where`` names the entry
// in messages.  Throws MissingKey or std::runtime_error.
PairSNAPQEq::Descriptor parse_descriptor(const OrderedJson &d,
                                         const std::vector<std::string> &elements,
                                         const std::string &where)
{
  auto flag = [&](const char *key) {
    const auto &v = need(d, key, where);
    if (!v.is_boolean()) throw std::runtime_error(where + "." + key + " must be true or false");
    return v.get<bool>();
  };
  auto number = [&](const char *key) { return need(d, key, where).get<double>(); };
  PairSNAPQEq::Descriptor out;
  snapqeq::SNAOptions &opt = out.opt;
  opt.twojmax = need(d, "twojmax", where).get<int>();
  out.rcutfac = number("rcutfac");
  opt.rfac0 = number("rfac0");
  opt.rmin0 = number("rmin0");
  opt.switchflag = flag("switchflag");
  opt.bzeroflag = flag("bzeroflag");
  out.quadraticflag = flag("quadraticflag");
  opt.chemflag = flag("chemflag");
  opt.bnormflag = flag("bnormflag");
  opt.wselfallflag = flag("wselfallflag");
  opt.switchinnerflag = flag("switchinnerflag");
  const auto &weights = need(d, "weights", where);
  const auto &sinner = need(d, "sinner", where);
  const auto &dinner = need(d, "dinner", where);

  // per-element values; the order of the radii is the element-block order of chem
  const auto &radii = need(d, "radii", where);
  std::vector<std::string> desc_elems;
  for (auto it = radii.begin(); it != radii.end(); ++it) desc_elems.push_back(it.key());
  opt.nelements = opt.chemflag ? (int) desc_elems.size() : 1;
  const int ne = elements.size();
  out.radius.assign(ne, 0.0);
  out.weight.assign(ne, 0.0);
  out.sinner.assign(ne, 0.0);
  out.dinner.assign(ne, 0.0);
  out.chem_block.assign(ne, 0);
  for (int e = 0; e < ne; ++e) {
    const std::string &el = elements[e];
    auto pos = std::find(desc_elems.begin(), desc_elems.end(), el);
    if (pos == desc_elems.end() || !weights.contains(el))
      throw std::runtime_error(where + " has no radius/weight for " + el);
    out.chem_block[e] = opt.chemflag ? int(pos - desc_elems.begin()) : 0;
    out.radius[e] = radii[el].get<double>();
    out.weight[e] = weights[el].get<double>();
    if (opt.switchinnerflag) {
      if (!sinner.is_object() || !sinner.contains(el) || !dinner.is_object() ||
          !dinner.contains(el))
        throw std::runtime_error("switchinnerflag needs sinner and dinner for " + el);
      out.sinner[e] = sinner[el].get<double>();
      out.dinner[e] = dinner[el].get<double>();
    }
  }
  return out;
}

}    // namespace

/* ----------------------------------------------------------------------
   the TorchScript module and the autograd graph of the current step
------------------------------------------------------------------------- */

// a bispectrum as the networks read it: linear B, then (with quadraticflag) the upper
// triangle of B B^T with 1/2 B_a^2 on the diagonal (snapqeq.Bispectrum, LAMMPS
// quadraticflag)
struct QuadraticTerms {
  bool on = false;
  torch::Tensor a, c, scale;    // quadratic columns B_a B_c (1/2 B_a^2)

  void set(bool quadratic, int k)
  {
    on = quadratic;
    if (!on) return;
    std::vector<int64_t> ia, ic;
    std::vector<double> sc;
    for (int i = 0; i < k; ++i)
      for (int j = i; j < k; ++j) {
        ia.push_back(i);
        ic.push_back(j);
        sc.push_back(i == j ? 0.5 : 1.0);
      }
    a = torch::tensor(ia, torch::kInt64);
    c = torch::tensor(ic, torch::kInt64);
    scale = torch::tensor(sc, torch::kFloat64);
  }

  torch::Tensor apply(const torch::Tensor &b) const
  {
    if (!on) return b;
    return torch::cat({b, b.index_select(1, a) * b.index_select(1, c) * scale}, 1);
  }
};

struct PairSNAPQEq::Model {
  torch::jit::Module module;
  QuadraticTerms quadratic;           // of the model's descriptor
  QuadraticTerms olcao_quadratic;     // of the OLCAO head's medium-range descriptor

  // graph of the current step
  torch::Tensor blin, bfull, species, chi, qt, eshort;
  int member = -1;    // committee member of the methods below (-1: a single model file)

  torch::Tensor features(const torch::Tensor &b) const { return quadratic.apply(b); }

  // chi of n atoms from their linear bispectrum (n x k) and model element indices
  std::vector<double> electronegativity(const double *b, const int *elem, int n, int k)
  {
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    blin = torch::from_blob(const_cast<double *>(b), {n, k}, f64).clone().requires_grad_(true);
    bfull = features(blin);
    std::vector<int64_t> sp(elem, elem + n);
    species = torch::from_blob(sp.data(), {n}, torch::kInt64).clone();
    chi = member < 0 ? module.forward({bfull, species}).toTensor()
                     : module.get_method("member_chi")({c10::IValue((int64_t) member), bfull,
                                                         species}).toTensor();
    if (chi.dim() != 1 || chi.size(0) != n || chi.scalar_type() != torch::kFloat64)
      throw std::runtime_error("forward(b, species) must return a float64 vector of length n");
    auto c = chi.detach().contiguous();
    return {c.data_ptr<double>(), c.data_ptr<double>() + n};
  }

  // per-atom short-range energies at charges q; returns dE_short/dq_i
  std::vector<double> short_range(const std::vector<double> &q, std::vector<double> &energy)
  {
    const int64_t n = q.size();
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    qt = torch::from_blob(const_cast<double *>(q.data()), {n}, f64).clone().requires_grad_(true);
    eshort = member < 0 ? module.get_method("short_energy")({bfull, qt, species}).toTensor()
                        : module.get_method("member_short_energy")(
                              {c10::IValue((int64_t) member), bfull, qt, species}).toTensor();
    if (eshort.dim() != 1 || eshort.size(0) != n)
      throw std::runtime_error("short_energy(b, q, species) must return a vector of length n");
    auto e = eshort.detach().contiguous();
    energy.assign(e.data_ptr<double>(), e.data_ptr<double>() + n);
    auto g = torch::autograd::grad({eshort.sum()}, {qt}, {}, true, false, true)[0];
    if (!g.defined()) return std::vector<double>(n, 0.0);
    g = g.contiguous();
    return {g.data_ptr<double>(), g.data_ptr<double>() + n};
  }

  // beta_i = w_i dchi_i/dB_i (+ dE_short_i/dB_i) for the linear components, n x k
  void beta(const std::vector<double> &w, bool with_short, double *out)
  {
    const int64_t n = w.size();
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto wt = torch::from_blob(const_cast<double *>(w.data()), {n}, f64).clone();
    std::vector<torch::Tensor> outputs{chi}, weights{wt};
    if (with_short) {
      outputs.push_back(eshort);
      weights.push_back(torch::ones_like(eshort));
    }
    auto g = torch::autograd::grad(outputs, {blin}, weights, false, false, true)[0];
    const int64_t k = blin.size(1);
    if (!g.defined()) {
      std::fill(out, out + n * k, 0.0);
    } else {
      g = g.contiguous();
      std::copy(g.data_ptr<double>(), g.data_ptr<double>() + n * k, out);
    }
    blin = bfull = species = chi = qt = eshort = torch::Tensor();    // free the graph
  }

  // OLCAO head: mean and std (n x d, Hartree) from the site features
  // [features(B) | medium-range features | q phi] of n atoms (the blocks absent when km = 0
  // or q = nullptr), row-major into mean and std
  void potential_coefficients(int n, const double *b, int k, const double *bm, int km,
                              const double *q, const double *phi, const int *elem, int d,
                              double *mean, double *std)
  {
    torch::NoGradGuard no_grad;
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto blob = [&](const double *p, int64_t cols) {
      return torch::from_blob(const_cast<double *>(p), {n, cols}, f64);
    };
    std::vector<torch::Tensor> blocks{features(blob(b, k))};
    if (km > 0) blocks.push_back(olcao_quadratic.apply(blob(bm, km)));
    if (q) {
      blocks.push_back(torch::from_blob(const_cast<double *>(q), {n, 1}, f64));
      blocks.push_back(torch::from_blob(const_cast<double *>(phi), {n, 1}, f64));
    }
    std::vector<int64_t> sp(elem, elem + n);
    auto out = module.get_method("potential_coefficients")(
        {torch::cat(blocks, 1), torch::from_blob(sp.data(), {n}, torch::kInt64)});
    const auto &tuple = out.toTupleRef().elements();
    if (tuple.size() != 2)
      throw std::runtime_error("potential_coefficients(x, species) must return (mean, std)");
    double *dest[2] = {mean, std};
    for (int t = 0; t < 2; ++t) {
      auto v = tuple[t].toTensor();
      if (v.dim() != 2 || v.size(0) != n || v.size(1) != d || v.scalar_type() != torch::kFloat64)
        throw std::runtime_error("potential_coefficients(x, species) must return two float64 " +
                                 std::to_string(n) + " x " + std::to_string(d) + " arrays");
      v = v.contiguous();
      std::copy(v.data_ptr<double>(), v.data_ptr<double>() + (size_t) n * d, dest[t]);
    }
  }
};

/* ---------------------------------------------------------------------- */

PairSNAPQEq::PairSNAPQEq(LAMMPS *lmp) : Pair(lmp), ncached(0), mpi(world)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  // the reciprocal-space forces are not pairwise (and the cluster forces come from
  // gathered positions), so sum r.f over local + ghost atoms is not the virial
  no_virial_fdotr_compute = 1;

  total_charge = 0.0;
  tol = 1.0e-10;
  ewald_accuracy = 1.0e-6;
  maxiter = 1000;
  periodic = false;
  snap_cutmax = 0.0;
  cand_ncalls = cand_lastcall = -1;
  qeq_order_changed = true;
  cand_dirty = true;
  n_members = 1;
  member_index = 0;
  fmember_nall = 0;
  energy_std = force_std_max = 0.0;
  committee_ethr = committee_fthr = 0.0;
  committee_stop = false;
  committee_warnings[0] = committee_warnings[1] = 0;
  fstd_atom = nullptr;
  comm_reverse = 0;
  has_short_range = false;
  ncoeff_linear = ncoeff = 0;
  has_olcao = olcao_long_range = olcao_has_medium = false;
  olcao_ncol = olcao_ncoeff_linear = 0;
  olcao_cutmax = 0.0;
  olcao_every = olcao_cutoff = false;
  olcao_step = -1;
  chemical_potential = 0.0;
  last_iterations = warned_unconverged = 0;
  guard_mode = GUARD_STOP;
  guard_factor_override = -1.0;
  guard_factor = guard_descriptor_margin = guard_charge_margin = 0.0;
  guard_has_charge = false;
  guard_qlo = guard_qhi = 0.0;
  guard_warnings[0] = guard_warnings[1] = guard_warnings[2] = 0;
  logged_setup = false;

  q_atom = chi_atom = phi_atom = nullptr;
  olcao_mean = olcao_std = nullptr;
  nmax_atom = 0;

  // extra global values for `compute pair snapqeq`: chemical potential (eV/e), solver
  // iterations, electrostatic energy (eV), and for committee files the energy std (eV)
  // and the largest per-atom force std (eV/Angstrom); means over the members
  nextra = 5;
  pvector = new double[nextra];
  for (int k = 0; k < nextra; ++k) pvector[k] = 0.0;

  electrostatics = std::make_unique<snapqeq::Electrostatics>(&mpi);
}

PairSNAPQEq::~PairSNAPQEq()
{
  if (copymode) return;
  delete[] pvector;
  memory->destroy(q_atom);
  memory->destroy(chi_atom);
  memory->destroy(phi_atom);
  memory->destroy(fstd_atom);
  memory->destroy(olcao_mean);
  memory->destroy(olcao_std);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(map);
  }
}

/* ---------------------------------------------------------------------- */

void PairSNAPQEq::allocate()
{
  allocated = 1;
  const int n = atom->ntypes;
  memory->create(setflag, n + 1, n + 1, "pair:setflag");
  memory->create(cutsq, n + 1, n + 1, "pair:cutsq");
  memory->create(map, n + 1, "pair:map");
  for (int i = 0; i <= n; ++i)
    for (int j = 0; j <= n; ++j) setflag[i][j] = 0;
  type_elem.assign(n + 1, -1);
}

/* ----------------------------------------------------------------------
   pair_style snapqeq MODEL.pt [total_charge Q] [tol X] [ewald_accuracy A] [maxiter N]
                      [olcao yes/no] [guard stop/strict/warn] [min_distance_factor F]
------------------------------------------------------------------------- */

void PairSNAPQEq::settings(int narg, char **arg)
{
  if (narg < 1) error->all(FLERR, "Illegal pair_style snapqeq command: missing model file");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "Pair style snapqeq requires metal units (the model uses eV, Angstrom, e)");

  // keywords not given take their defaults (also when pair_style is re-issued)
  total_charge = 0.0;
  tol = 1.0e-10;
  ewald_accuracy = 1.0e-6;
  maxiter = 1000;
  olcao_every = false;
  guard_mode = GUARD_STOP;
  guard_factor_override = -1.0;
  committee_ethr = committee_fthr = 0.0;
  committee_stop = false;

  int iarg = 1;
  while (iarg < narg) {
    const std::string key = arg[iarg];
    if (iarg + 2 > narg) error->all(FLERR, "Illegal pair_style snapqeq command: {} needs a value", key);
    if (key == "committee_threshold") {
      // E (eV/atom) and F (eV/Angstrom), none to skip either
      if (iarg + 3 > narg)
        error->all(FLERR, "Illegal pair_style snapqeq command: committee_threshold needs two "
                   "values (energy std per atom in eV/atom, force std in eV/Angstrom; none "
                   "skips either)");
      double *dest[2] = {&committee_ethr, &committee_fthr};
      for (int k = 0; k < 2; ++k) {
        const std::string v = arg[iarg + 1 + k];
        if (v == "none") continue;
        *dest[k] = utils::numeric(FLERR, v, false, lmp);
        if (!(*dest[k] > 0.0))
          error->all(FLERR, "pair_style snapqeq committee_threshold values must be positive "
                     "or none, not {}", v);
      }
      iarg += 3;
      continue;
    }
    if (key == "committee_action") {
      const std::string mode = arg[iarg + 1];
      if (mode != "warn" && mode != "stop")
        error->all(FLERR, "pair_style snapqeq committee_action must be warn or stop, not {}", mode);
      committee_stop = mode == "stop";
    } else if (key == "total_charge") {
      total_charge = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
    } else if (key == "tol") {
      tol = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(tol > 0.0 && tol < 1.0)) error->all(FLERR, "pair_style snapqeq tol must lie in (0, 1)");
    } else if (key == "ewald_accuracy") {
      ewald_accuracy = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (!(ewald_accuracy > 0.0 && ewald_accuracy < 1.0e-2))
        error->all(FLERR, "pair_style snapqeq ewald_accuracy must lie in (0, 0.01)");
    } else if (key == "maxiter") {
      maxiter = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (maxiter < 1) error->all(FLERR, "pair_style snapqeq maxiter must be positive");
    } else if (key == "olcao") {
      olcao_every = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else if (key == "guard") {
      const std::string mode = arg[iarg + 1];
      if (mode == "stop") guard_mode = GUARD_STOP;
      else if (mode == "strict") guard_mode = GUARD_STRICT;
      else if (mode == "warn") guard_mode = GUARD_WARN;
      else error->all(FLERR, "pair_style snapqeq guard must be one of stop, strict, warn, not {}", mode);
    } else if (key == "min_distance_factor") {
      guard_factor_override = utils::numeric(FLERR, arg[iarg + 1], false, lmp);
      if (guard_factor_override < 0.0)
        error->all(FLERR, "pair_style snapqeq min_distance_factor must not be negative");
    } else {
      error->all(FLERR, "Unknown pair_style snapqeq keyword {}", key);
    }
    iarg += 2;
  }

  load_model(arg[0]);
  if (olcao_every && !has_olcao)
    error->all(FLERR, "pair_style snapqeq olcao yes: model file {} has no OLCAO head", model_file);
  if ((committee_ethr > 0.0 || committee_fthr > 0.0) && n_members == 1)
    error->all(FLERR, "pair_style snapqeq committee_threshold: model file {} holds a single "
               "model, not a committee", model_file);

  // a new model invalidates the element map and the solver's initial guesses
  if (allocated) {
    for (int i = 0; i <= atom->ntypes; ++i)
      for (int j = 0; j <= atom->ntypes; ++j) setflag[i][j] = 0;
    type_elem.assign(atom->ntypes + 1, -1);
  }
  clear_history();
}

/* ----------------------------------------------------------------------
   no initial guesses: two solves (charges, short-range adjoint) per committee member
------------------------------------------------------------------------- */

void PairSNAPQEq::clear_history()
{
  history.assign(2 * (size_t) n_members, std::vector<std::vector<double>>(kHistory));
  history_step.assign(2 * (size_t) n_members, -1);
}

/* ----------------------------------------------------------------------
   read and validate the model file: TorchScript archive + metadata JSON (SPEC section 7)
------------------------------------------------------------------------- */

void PairSNAPQEq::load_model(const std::string &file)
{
  model_file = file;
  if (!platform::file_is_readable(file))
    error->all(FLERR, "Cannot open snapqeq model file {}: {}", file, utils::getsyserror());

  auto m = std::make_unique<Model>();
  torch::jit::ExtraFilesMap extra{{kMetadataFile, ""}};
  try {
    m->module = torch::jit::load(file, torch::kCPU, extra);
  } catch (const c10::Error &e) {
    // a torch.save file (training checkpoint) is a zip without TorchScript's constants
    const std::string what = e.what_without_backtrace();
    if (what.find("constants.pkl") != std::string::npos)
      error->all(FLERR, "snapqeq model file {} is a training checkpoint, not a model file: run "
                 "`snapqeq export TRAINING_DIR --out model.pt` on its training folder", file);
    error->all(FLERR, "Cannot load snapqeq model file {}: not a TorchScript model ({})", file,
               what);
  } catch (const std::exception &e) {
    error->all(FLERR, "Cannot load snapqeq model file {}: {}", file, e.what());
  }
  m->module.eval();
  if (extra[kMetadataFile].empty())
    error->all(FLERR, "snapqeq model file {} has no {}: it was not written by snapqeq export",
               file, kMetadataFile);

  OrderedJson meta;
  try {
    meta = OrderedJson::parse(extra[kMetadataFile]);
  } catch (const std::exception &e) {
    error->all(FLERR, "snapqeq model file {}: unreadable metadata: {}", file, e.what());
  }
  std::vector<std::string> missing;
  if (!meta.is_object())
    error->all(FLERR, "snapqeq model file {}: the metadata is not a JSON object", file);
  for (const auto &key : kRequiredKeys)
    if (!meta.contains(key)) missing.emplace_back(key);
  if (!missing.empty())
    error->all(FLERR, "snapqeq model file {}: metadata lacks {}; re-export the model", file,
               join(missing));

  try {
    if (meta["format"].get<std::string>() != kFormat)
      error->all(FLERR, "snapqeq model file {}: unknown model format {}", file,
                 meta["format"].dump());
    const int version = meta["format_version"].get<int>();
    if (version != kFormatVersion)
      error->all(FLERR,
                 "snapqeq model file {}: model format version {}, this plugin reads version {}; "
                 "re-export the model with a matching snapqeq",
                 file, version, kFormatVersion);
    const auto &units = meta["units"];
    if (need(units, "energy", "units").get<std::string>() != "eV" ||
        need(units, "length", "units").get<std::string>() != "Angstrom" ||
        need(units, "charge", "units").get<std::string>() != "e")
      error->all(FLERR, "snapqeq model file {}: units {} are not eV/Angstrom", file,
                 units.dump());

    elem_names = meta["elements"].get<std::vector<std::string>>();
    const int ne = elem_names.size();
    if (ne < 1) error->all(FLERR, "snapqeq model file {}: no elements", file);
    hardness = meta["hardness"].get<std::vector<double>>();
    width = meta["widths"].get<std::vector<double>>();
    energy0 = meta["e0"].get<std::vector<double>>();
    if ((int) hardness.size() != ne || (int) width.size() != ne || (int) energy0.size() != ne)
      error->all(FLERR, "snapqeq model file {}: hardness, widths and e0 need one value per element",
                 file);
    for (int e = 0; e < ne; ++e)
      if (!(hardness[e] > 0.0) || !(width[e] > 0.0))
        error->all(FLERR, "snapqeq model file {}: hardness and widths must be positive", file);
    has_short_range = meta["has_short_range"].get<bool>();

    // committee (snapqeq.training.export.export_committee): per member hardness and E0; the
    // widths, the descriptor and the short-range flag are shared
    n_members = meta["committee"].get<int>();
    if (n_members < 1)
      error->all(FLERR, "snapqeq model file {}: committee must be a positive count", file);
    member_hardness.assign(1, hardness);
    member_e0.assign(1, energy0);
    if (n_members > 1) {
      if (!m->module.find_method("member_chi"))
        error->all(FLERR, "snapqeq model file {}: metadata announces a committee the archive "
                   "lacks (no method member_chi)", file);
      const auto &members = meta["members"];
      if (!members.is_array() || (int) members.size() != n_members)
        error->all(FLERR, "snapqeq model file {}: the members list does not have {} entries",
                   file, n_members);
      member_hardness.clear();
      member_e0.clear();
      for (const auto &mem : members) {
        const auto h = need(mem, "hardness", "members[]").get<std::vector<double>>();
        const auto e0 = need(mem, "e0", "members[]").get<std::vector<double>>();
        const auto w = need(mem, "widths", "members[]").get<std::vector<double>>();
        if ((int) h.size() != ne || (int) e0.size() != ne || w != width)
          error->all(FLERR, "snapqeq model file {}: every committee member needs hardness and "
                     "e0 per element and the shared widths", file);
        for (double x : h)
          if (!(x > 0.0))
            error->all(FLERR, "snapqeq model file {}: hardness must be positive", file);
        member_hardness.push_back(h);
        member_e0.push_back(e0);
      }
    }

    const auto &d = meta["descriptor"];
    desc = parse_descriptor(d, elem_names, "descriptor");
    sna = std::make_unique<snapqeq::SNA>(desc.opt);
    sna_cache.clear();    // workspaces of the previous descriptor

    // OLCAO head (snapqeq.export_model(..., olcao=head)): metadata "olcao" with the
    // feature recipe and the exponent series, method potential_coefficients
    has_olcao = !meta["olcao"].is_null();
    if (has_olcao && n_members > 1)
      error->all(FLERR, "snapqeq model file {}: a committee with an OLCAO head is not supported",
                 file);
    olcao_sna.reset();
    olcao_has_medium = olcao_long_range = false;
    olcao_ncol = olcao_ncoeff_linear = 0;
    if (has_olcao) {
      const auto &head = meta["olcao"];
      const auto &recipe = need(head, "features", "olcao");
      // the local block is fed from the model's own bispectrum, as snapqeq train and
      // snapqeq.models.site_features.recipe_from_energy_model make it (compared key-sorted)
      if (SortedJson::parse(need(recipe, "local", "olcao.features").dump()) !=
          SortedJson::parse(d.dump()))
        error->all(FLERR, "snapqeq model file {}: the local descriptor of the OLCAO head differs "
                   "from the model's descriptor, which pair_style snapqeq does not support", file);
      if (!m->module.find_method("potential_coefficients"))
        error->all(FLERR, "snapqeq model file {}: metadata announces an OLCAO head the archive "
                   "lacks (no method potential_coefficients)", file);
      olcao_long_range = need(recipe, "long_range", "olcao.features").get<bool>();
      olcao_has_medium = !need(recipe, "medium", "olcao.features").is_null();
      if (olcao_has_medium) {
        olcao_desc = parse_descriptor(recipe["medium"], elem_names, "olcao.features.medium");
        olcao_sna = std::make_unique<snapqeq::SNA>(olcao_desc.opt);
        olcao_ncoeff_linear = olcao_sna->ncoeff();
      }
      const auto &exponents = need(head, "exponents", "olcao");
      for (const auto &el : elem_names)
        olcao_ncol = std::max(olcao_ncol, (int) exponents.at(el).size());
      if (olcao_ncol < 1)
        error->all(FLERR, "snapqeq model file {}: OLCAO head without exponent series", file);
    }
  } catch (LAMMPSException &) {
    throw;
  } catch (const MissingKey &e) {
    error->all(FLERR, "snapqeq model file {}: metadata lacks {}; re-export the model", file,
               e.what());
  } catch (const std::exception &e) {
    error->all(FLERR, "snapqeq model file {}: invalid metadata: {}", file, e.what());
  }

  ncoeff_linear = sna->ncoeff();
  ncoeff = ncoeff_linear + (desc.quadraticflag ? ncoeff_linear * (ncoeff_linear + 1) / 2 : 0);
  read_guard(extra[kMetadataFile]);
  m->quadratic.set(desc.quadraticflag, ncoeff_linear);
  if (has_olcao) m->olcao_quadratic.set(olcao_desc.quadraticflag, olcao_ncoeff_linear);

  // one trial evaluation, so that a network that does not fit the descriptor fails here
  // with a clear message rather than in the middle of a run
  try {
    for (int k = 0; k < n_members; ++k) {
      m->member = n_members > 1 ? k : -1;
      std::vector<double> b(ncoeff_linear, 0.0);
      int e = 0;
      m->electronegativity(b.data(), &e, 1, ncoeff_linear);
      if (has_short_range) {
        std::vector<double> es;
        m->short_range({0.0}, es);
      }
      m->blin = m->bfull = m->species = m->chi = m->qt = m->eshort = torch::Tensor();
    }
  } catch (const std::exception &e) {
    error->all(FLERR, "snapqeq model file {}: the network does not accept {} descriptor components: {}",
               file, ncoeff, message_of(e));
  }
  if (has_olcao) {    // the same for the head and its site features
    const int km = olcao_ncoeff_linear;
    const int nfeat = ncoeff + km + (olcao_desc.quadraticflag ? km * (km + 1) / 2 : 0) +
        (olcao_long_range ? 2 : 0);
    try {
      std::vector<double> b(ncoeff_linear, 0.0), bm(olcao_ncoeff_linear, 0.0), mean(olcao_ncol),
          std(olcao_ncol);
      const double zero = 0.0;
      const int e = 0;
      m->potential_coefficients(1, b.data(), ncoeff_linear, bm.data(), olcao_ncoeff_linear,
                                olcao_long_range ? &zero : nullptr, &zero, &e, olcao_ncol,
                                mean.data(), std.data());
    } catch (const std::exception &e) {
      error->all(FLERR, "snapqeq model file {}: the OLCAO head does not accept {} site features: {}",
                 file, nfeat, message_of(e));
    }
  }
  model = std::move(m);
  // member forces go back from the ghosts by a reverse communication of this style
  comm_reverse = n_members > 1 ? 3 * n_members : 0;
  clear_history();

  // libtorch runs inside each MPI rank: use as many threads as LAMMPS' OpenMP setting
  at::set_num_threads(std::max(1, comm->nthreads));

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "snapqeq: model {} (elements {}; twojmax {}, {} descriptor components{}{}{}{})\n",
                   file, join(elem_names), sna->options().twojmax, ncoeff,
                   desc.quadraticflag ? " incl. quadratic" : "",
                   has_short_range ? "; short-range network" : "",
                   n_members > 1 ? "; committee of " + std::to_string(n_members) + " members"
                                 : std::string(),
                   has_olcao ? "; OLCAO head, " + std::to_string(olcao_ncol) + " coefficients per site"
                             : std::string());

  if (comm->me == 0 && !guard_limitations.empty())
    utils::logmesg(lmp, "snapqeq guard: {}\n", guard_limitations);

  // per-atom OLCAO arrays have olcao_ncol columns: reallocate on the next step
  memory->destroy(olcao_mean);
  memory->destroy(olcao_std);
  nmax_atom = 0;
}

/* ----------------------------------------------------------------------
   the guard's thresholds and the training envelope from the metadata (snapqeq.models.guard);
   every key is required (load_model checked their presence); an envelope key that is null
   (unknown) leaves its check out, which a log line says
------------------------------------------------------------------------- */

void PairSNAPQEq::read_guard(const std::string &metadata_json)
{
  const OrderedJson meta = OrderedJson::parse(metadata_json);
  const int ne = elem_names.size();
  guard_trained.assign((size_t) ne * ne, 0.0);
  guard_lo.clear();
  guard_hi.clear();
  guard_has_range.assign(ne, 0);
  guard_has_charge = false;
  std::vector<std::string> missing;
  auto present = [&](const char *key) { return !need(meta, key, "").is_null(); };
  try {
    const auto &g = need(meta, "guard", "");
    guard_factor = need(g, "min_distance_factor", "guard").get<double>();
    guard_descriptor_margin = need(g, "descriptor_margin", "guard").get<double>();
    guard_charge_margin = need(g, "charge_margin", "guard").get<double>();
    if (present("min_distances") && !meta["min_distances"].empty()) {
      for (const auto &item : meta["min_distances"].items()) {
        const std::string key = item.key();
        const auto dash = key.find('-');
        auto a = std::find(elem_names.begin(), elem_names.end(), key.substr(0, dash));
        auto b = std::find(elem_names.begin(), elem_names.end(), key.substr(dash + 1));
        if (dash == std::string::npos || a == elem_names.end() || b == elem_names.end())
          throw std::runtime_error("min_distances key " + key + " is not a pair of its elements");
        const int ea = a - elem_names.begin(), eb = b - elem_names.begin();
        guard_trained[ea * ne + eb] = guard_trained[eb * ne + ea] = item.value().get<double>();
      }
    } else {
      missing.emplace_back("min_distances");
    }
    if (present("descriptor_range") && !meta["descriptor_range"].empty()) {
      guard_lo.assign((size_t) ne * ncoeff_linear, 0.0);
      guard_hi.assign((size_t) ne * ncoeff_linear, 0.0);
      for (int e = 0; e < ne; ++e) {
        if (!meta["descriptor_range"].contains(elem_names[e])) continue;
        const auto &r = meta["descriptor_range"][elem_names[e]];
        const auto lo = r.at("min").get<std::vector<double>>();
        const auto hi = r.at("max").get<std::vector<double>>();
        if ((int) lo.size() != ncoeff_linear || (int) hi.size() != ncoeff_linear)
          throw std::runtime_error("descriptor_range of " + elem_names[e] + " has " +
                                   std::to_string(lo.size()) + " components, the descriptor " +
                                   std::to_string(ncoeff_linear));
        std::copy(lo.begin(), lo.end(), guard_lo.begin() + (size_t) e * ncoeff_linear);
        std::copy(hi.begin(), hi.end(), guard_hi.begin() + (size_t) e * ncoeff_linear);
        guard_has_range[e] = 1;
      }
    } else {
      missing.emplace_back("descriptor_range");
    }
    if (present("total_charge_range")) {
      const auto q = meta["total_charge_range"].get<std::vector<double>>();
      if (q.size() != 2) throw std::runtime_error("total_charge_range needs two numbers");
      guard_qlo = q[0];
      guard_qhi = q[1];
      guard_has_charge = true;
    } else {
      missing.emplace_back("total_charge_range");
    }
  } catch (const MissingKey &e) {
    error->all(FLERR, "snapqeq model file {}: metadata lacks {}; re-export the model",
               model_file, e.what());
  } catch (const std::exception &e) {
    error->all(FLERR, "snapqeq model file {}: invalid guard data: {}", model_file, e.what());
  }
  if (guard_factor_override >= 0.0) guard_factor = guard_factor_override;
  guard_floor.resize(guard_trained.size());
  for (size_t k = 0; k < guard_trained.size(); ++k) guard_floor[k] = guard_factor * guard_trained[k];
  std::string list;
  for (const auto &m : missing) list += (list.empty() ? "" : ", ") + m;
  guard_limitations = missing.empty() ? std::string()
      : "the model file has no " + list + " (written by an older snapqeq or without training "
        "data): the guard skips those checks; re-export it with snapqeq train";
}

/* ----------------------------------------------------------------------
   a failed check: an error (on the rank that found it) or a limited number of warnings
------------------------------------------------------------------------- */

void PairSNAPQEq::guard_fail(int kind, const std::string &message, bool stop)
{
  if (stop)
    error->one(FLERR, message + kGuardStopHint);
  if (++guard_warnings[kind] <= kMaxWarnings)
    error->warning(FLERR, message + (guard_warnings[kind] == kMaxWarnings
                                         ? " (further warnings of this kind muted)" : ""));
}

/* ----------------------------------------------------------------------
   this step's pairs (model descriptor neighbours) and bispectrum of the owned atoms
   against the training envelope; atoms are named by their IDs
------------------------------------------------------------------------- */

void PairSNAPQEq::check_guard()
{
  const int ne = elem_names.size();
  int *type = atom->type;
  tagint *tag = atom->tag;
  const int nown = owned.size();
  // the closest pair relative to its floor
  double worst = 1.0;
  int wa = -1, wj = -1;
  for (int a = 0; a < nown; ++a) {
    const int ei = type_elem[type[owned[a]]];
    for (int c = nbr.offset[a]; c < nbr.offset[a + 1]; ++c) {
      const int j = nbr.index[c];
      const double floor = guard_floor[ei * ne + type_elem[type[j]]];
      if (floor <= 0.0) continue;
      const double *r = &nbr.rij[3 * (size_t) c];
      const double ratio = std::sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]) / floor;
      if (ratio < worst) {
        worst = ratio;
        wa = a;
        wj = c;
      }
    }
  }
  if (wa >= 0) {
    const int i = owned[wa], j = nbr.index[wj];
    const int ei = type_elem[type[i]], ej = type_elem[type[j]];
    const double floor = guard_floor[ei * ne + ej];
    guard_fail(0, fmt::format("snapqeq guard: atoms {} ({}) and {} ({}) are {:.3f} Angstrom "
                              "apart, below {:.3f} = min_distance_factor x {:.3f}, the shortest "
                              "{}-{} distance in the model's training data: the model is not "
                              "valid there (collapsed structure?)",
                              (bigint) tag[i], elem_names[ei], (bigint) tag[j], elem_names[ej],
                              worst * floor, floor, guard_trained[ei * ne + ej], elem_names[ei],
                              elem_names[ej]),
               guard_mode != GUARD_WARN);
  }
  if (guard_lo.empty()) return;
  // the component furthest outside its widened range, per element (as snapqeq.models.guard)
  for (int e = 0; e < ne; ++e) {
    if (!guard_has_range[e]) continue;
    const double *lo = &guard_lo[(size_t) e * ncoeff_linear];
    const double *hi = &guard_hi[(size_t) e * ncoeff_linear];
    double excess = 0.0;
    int ba = -1, bk = -1;
    for (int a = 0; a < nown; ++a) {
      if (type_elem[type[owned[a]]] != e) continue;
      const double *b = &blin[(size_t) a * ncoeff_linear];
      for (int k = 0; k < ncoeff_linear; ++k) {
        const double pad = guard_descriptor_margin * (hi[k] - lo[k]);
        const double x = std::max(lo[k] - pad - b[k], b[k] - hi[k] - pad);
        if (x > excess) {
          excess = x;
          ba = a;
          bk = k;
        }
      }
    }
    if (ba >= 0)
      guard_fail(1, fmt::format("snapqeq guard: atom {} ({}) has bispectrum component {} = "
                                "{:.6g}, outside its training range [{:.6g}, {:.6g}] by more "
                                "than descriptor_margin {:g} x the range: the model "
                                "extrapolates there",
                                (bigint) tag[owned[ba]], elem_names[e], bk,
                                blin[(size_t) ba * ncoeff_linear + bk], lo[bk], hi[bk],
                                guard_descriptor_margin),
                 guard_mode == GUARD_STRICT);
  }
}

/* ----------------------------------------------------------------------
   per-type masses against the standard masses of the pair_coeff elements: a swapped
   element list (pair_coeff * * Cl Na for Na type 1) would otherwise run silently
------------------------------------------------------------------------- */

void PairSNAPQEq::check_masses()
{
  if (atom->rmass_flag || !atom->mass || comm->me != 0) return;
  for (int t = 1; t <= atom->ntypes; ++t) {
    if (type_elem[t] < 0 || !atom->mass_setflag[t]) continue;
    const std::string &el = elem_names[type_elem[t]];
    const double standard = snapqeq::standard_mass(el.c_str());
    if (standard <= 0.0) continue;
    if (std::fabs(atom->mass[t] - standard) > std::max(0.5, 0.02 * standard))
      error->warning(FLERR, "pair_coeff maps atom type {} (mass {:g}) to {} (standard mass "
                     "{:g}): the masses contradict the element names; check the order of the "
                     "elements in pair_coeff", t, atom->mass[t], el, standard);
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (one element or NULL per atom type)
------------------------------------------------------------------------- */

void PairSNAPQEq::coeff(int narg, char **arg)
{
  if (!model) error->all(FLERR, "pair_style snapqeq must be set before pair_coeff");
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes)
    error->all(FLERR, "Incorrect args for pair coefficients: pair_coeff * * needs {} element names "
               "(one per atom type, NULL to skip a type)", ntypes);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "Incorrect args for pair coefficients: pair style snapqeq needs pair_coeff * *");

  // type -> element of the deck (map, elements; setflag of the mapped type pairs), then
  // element of the deck -> element of the model file
  map_element2type(ntypes, arg + 2);
  std::vector<int> model_index(nelements, -1);
  for (int k = 0; k < nelements; ++k) {
    auto pos = std::find(elem_names.begin(), elem_names.end(), std::string(elements[k]));
    if (pos == elem_names.end())
      error->all(FLERR, "Element {} is not in snapqeq model file {}; its elements are {}",
                 elements[k], model_file, join(elem_names));
    model_index[k] = int(pos - elem_names.begin());
  }
  for (int t = 1; t <= ntypes; ++t) type_elem[t] = map[t] >= 0 ? model_index[map[t]] : -1;
}

/* ---------------------------------------------------------------------- */

void PairSNAPQEq::init_style()
{
  if (force->newton_pair == 0) error->all(FLERR, "Pair style snapqeq requires newton pair on");
  if (strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR, "Pair style snapqeq requires metal units (the model uses eV, Angstrom, e)");
  if (atom->tag_enable == 0) error->all(FLERR, "Pair style snapqeq requires atom IDs");
  if (domain->dimension != 3) error->all(FLERR, "Pair style snapqeq requires a 3d system");
  const int nper = domain->periodicity[0] + domain->periodicity[1] + domain->periodicity[2];
  if (nper != 0 && nper != 3)
    error->all(FLERR, "Pair style snapqeq supports fully periodic (p p p) or fully non-periodic "
               "(f/s/m in x, y and z) boundaries, not mixed ones");

  // largest bispectrum cutoffs of the elements in use; the OLCAO head's medium-range
  // descriptor enters the neighbour (and so the ghost) cutoff only once it was asked for,
  // as it can reach much further than the model's own
  snap_cutmax = descriptor_cutmax(desc);
  olcao_cutoff = has_olcao && olcao_wanted();
  olcao_cutmax = olcao_cutoff && olcao_has_medium ? descriptor_cutmax(olcao_desc) : 0.0;
  double amax = 0.0;
  for (int t = 1; t <= atom->ntypes; ++t)
    if (type_elem[t] >= 0) amax = std::max(amax, width[type_elem[t]]);

  // Ewald: the real-space cutoff is fixed here (it sets the neighbour and ghost cutoffs),
  // from the balance of real- and reciprocal-space work for this cell; each step then uses
  // beta = s / cutoff, whatever the volume does
  periodic = nper == 3;
  ewald = snapqeq::EwaldParameters();
  if (periodic) {
    double mine = 0.0;
    for (int i = 0; i < atom->nlocal; ++i) mine += type_elem[atom->type[i]] >= 0 ? 1.0 : 0.0;
    double natoms = 0.0;
    MPI_Allreduce(&mine, &natoms, 1, MPI_DOUBLE, MPI_SUM, world);
    const double volume = domain->xprd * domain->yprd * domain->zprd;
    try {
      ewald = snapqeq::ewald_parameters(natoms, volume, amax, ewald_accuracy);
    } catch (const std::exception &e) {
      error->all(FLERR, "snapqeq electrostatics: {}", e.what());
    }
    // the full list holds ~ rho (4 pi/3) (r_c + skin)^3 pairs per atom (r_c: the Ewald
    // real-space cutoff, or a longer OLCAO medium-range one), which can exceed LAMMPS'
    // default per-atom limit: raise it with margin
    const double reach = std::max({ewald.real_cutoff, snap_cutmax, olcao_cutmax}) + neighbor->skin;
    const int need = int(1.5 * natoms / volume * 4.18879020478639098 /* 4 pi/3 */ * reach * reach * reach);
    if (need > neighbor->oneatom) {
      neighbor->oneatom = need;
      neighbor->pgsize = std::max(neighbor->pgsize, 10 * need);
      if (comm->me == 0)
        utils::logmesg(lmp, "snapqeq: neigh_modify one {} page {} for the full neighbour list\n",
                       neighbor->oneatom, neighbor->pgsize);
    }
  }

  // one full list with the pair cutoff (the Ewald real-space cutoff for periodic cells);
  // the shorter bispectrum list and the Ewald half list are trimmed from it once per
  // build (update_candidates)
  neighbor->add_request(this, NeighConst::REQ_FULL);
  cand_dirty = true;
  logged_setup = false;

  // the guard: total charge against the trained range (snapqeq.models.guard), masses against
  // the element names; warnings are counted per run
  guard_warnings[0] = guard_warnings[1] = guard_warnings[2] = 0;
  committee_warnings[0] = committee_warnings[1] = 0;
  check_masses();
  if (guard_has_charge && (total_charge < guard_qlo - guard_charge_margin ||
                           total_charge > guard_qhi + guard_charge_margin)) {
    const std::string message = fmt::format(
        "snapqeq guard: total charge {:g} e lies outside the trained range [{:g}, {:g}] e by "
        "more than charge_margin {:g} e: the model extrapolates there",
        total_charge, guard_qlo, guard_qhi, guard_charge_margin);
    if (guard_mode != GUARD_WARN)
      error->all(FLERR, message + kGuardStopHint);
    if (comm->me == 0) error->warning(FLERR, message);
  }
}

/* ---------------------------------------------------------------------- */

double PairSNAPQEq::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  const int ei = type_elem[i], ej = type_elem[j];
  if (ei < 0 || ej < 0) return 0.0;
  double cut = desc.cut(ei, ej);
  if (olcao_cutmax > 0.0) cut = std::max(cut, olcao_desc.cut(ei, ej));
  return periodic ? std::max(cut, ewald.real_cutoff) : cut;
}

/* ----------------------------------------------------------------------
   largest pair cutoff of a descriptor between the elements in use
------------------------------------------------------------------------- */

double PairSNAPQEq::descriptor_cutmax(const Descriptor &d) const
{
  double cut = 0.0;
  for (int t = 1; t <= atom->ntypes; ++t)
    for (int u = 1; u <= atom->ntypes; ++u)
      if (type_elem[t] >= 0 && type_elem[u] >= 0)
        cut = std::max(cut, d.cut(type_elem[t], type_elem[u]));
  return cut;
}

/* ---------------------------------------------------------------------- */

void PairSNAPQEq::grow_peratom()
{
  if (atom->nmax <= nmax_atom) return;
  nmax_atom = atom->nmax;
  memory->grow(q_atom, nmax_atom, "pair:q_atom");
  memory->grow(chi_atom, nmax_atom, "pair:chi_atom");
  memory->grow(phi_atom, nmax_atom, "pair:phi_atom");
  if (n_members > 1) memory->grow(fstd_atom, nmax_atom, "pair:fstd_atom");
  if (has_olcao) {
    memory->grow(olcao_mean, nmax_atom, olcao_ncol, "pair:olcao_mean");
    memory->grow(olcao_std, nmax_atom, olcao_ncol, "pair:olcao_std");
  }
}

/* ----------------------------------------------------------------------
   per-atom outputs of the last evaluation: q, chi, phi, force_std (vectors) and olcao,
   olcao_std (N x D); read by compute snapqeq/atom and fix pair, no side effects
------------------------------------------------------------------------- */

PairSNAPQEq::PerAtom PairSNAPQEq::peratom(const std::string &name) const
{
  PerAtom out;
  if (name == "q") out.vector = q_atom;
  else if (name == "chi") out.vector = chi_atom;
  else if (name == "phi") out.vector = phi_atom;
  else if (name == "force_std") {
    if (n_members == 1)
      error->all(FLERR, "Pair style snapqeq cannot provide per-atom force_std: model file {} "
                 "holds a single model, not a committee (snapqeq train with committee: n)",
                 model_file);
    out.vector = fstd_atom;
  } else if (name == "olcao" || name == "olcao_std") {
    if (!has_olcao)
      error->all(FLERR, "Pair style snapqeq cannot provide per-atom {}: model file {} has no "
                 "OLCAO head (export the model with one, e.g. snapqeq train with an olcao "
                 "section)", name, model_file);
    out.array = name == "olcao" ? olcao_mean : olcao_std;
    out.ncol = olcao_ncol;
  } else {
    error->all(FLERR, "Pair style snapqeq has no per-atom output {}", name);
  }
  return out;
}

/* ----------------------------------------------------------------------
   fix pair: q, chi, phi, force_std on any step; olcao, olcao_std only with the keyword
   olcao yes (fix pair cannot tell the pair style on which steps it needs the head: that
   is what compute snapqeq/atom is for)
------------------------------------------------------------------------- */

void *PairSNAPQEq::extract_peratom(const char *name, int &ncol)
{
  const std::string key = name;
  const bool head = key == "olcao" || key == "olcao_std";
  if (!head && key != "q" && key != "chi" && key != "phi" && key != "force_std") {
    ncol = 0;
    return nullptr;
  }
  const PerAtom out = peratom(key);
  ncol = out.ncol;
  if (!head) return (void *) out.vector;
  if (!olcao_every)
    error->all(FLERR, "Pair style snapqeq: per-atom {} through fix pair needs pair_style "
               "keyword olcao yes (the head every step); or use compute ID all snapqeq/atom "
               "olcao olcao_std, which evaluates it on the compute's steps only", key);
  if (update->whichflag != 0 && olcao_step != update->ntimestep)
    error->all(FLERR, "Pair style snapqeq did not compute the per-atom {} of step {}", key,
               update->ntimestep);
  return (void *) out.array;
}

/* ----------------------------------------------------------------------
   the OLCAO head: wanted for this run (the keyword or a compute snapqeq/atom that asks for
   its values; decides the neighbour cutoff at init_style) and due this step (the keyword,
   or such a compute matches the step: LAMMPS schedules the steps of computes with
   timeflag set, as for the per-atom energies of compute pe/atom)
------------------------------------------------------------------------- */

static std::vector<ComputeSNAPQEqAtom *> olcao_computes(Modify *modify)
{
  std::vector<ComputeSNAPQEqAtom *> out;
  for (Compute *c : modify->get_compute_by_style("^snapqeq/atom$")) {
    auto *sc = dynamic_cast<ComputeSNAPQEqAtom *>(c);
    if (sc && sc->wants_olcao()) out.push_back(sc);
  }
  return out;
}

bool PairSNAPQEq::olcao_wanted() const
{
  return olcao_every || !olcao_computes(modify).empty();
}

bool PairSNAPQEq::olcao_due()
{
  if (olcao_every) return true;
  for (ComputeSNAPQEqAtom *c : olcao_computes(modify))
    if (c->matchstep(update->ntimestep)) return true;
  return false;
}

/* ----------------------------------------------------------------------
   neighbours of owned atom a into a kernel workspace (the arrays stay valid until the
   next step)
------------------------------------------------------------------------- */

void PairSNAPQEq::Neighbors::load(int a, snapqeq::SNA *w) const
{
  const int off = offset[a];
  const bool inner = w->options().switchinnerflag;
  w->set_neighbors(offset[a + 1] - off, rij.data() + 3 * off, rcut.data() + off,
                   weight.data() + off, elem.data() + off,
                   inner ? sinner.data() + off : nullptr, inner ? dinner.data() + off : nullptr);
}

/* ----------------------------------------------------------------------
   after a neighbour-list build: the owned atoms of the charge equilibration, their
   bispectrum candidates (within the bispectrum cutoff + skin) and, for periodic cells,
   the Ewald real-space pairs (within the Ewald cutoff + skin; QEq indices and the image
   as whole cell vectors) from the full list.  Every
   unordered pair (every image) must enter the Ewald sum once over all ranks (see the
   rule below), and an atom's pair with its own image by the image with lexicographically
   positive displacement (the full list has both).
   Between builds local and ghost indices, ownership and these lists stay valid.
------------------------------------------------------------------------- */

void PairSNAPQEq::update_candidates()
{
  double **x = atom->x;
  int *type = atom->type;
  const int inum = list->inum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;
  const double skin = neighbor->skin;

  owned.clear();
  for (int ii = 0; ii < inum; ++ii)
    if (type_elem[type[ilist[ii]]] >= 0) owned.push_back(ilist[ii]);
  qeq_order_changed = true;
  trim_candidates(snap_cutmax, cand_offset, cand_snap);
  if (olcao_cutmax > 0.0) trim_candidates(olcao_cutmax, olcao_cand_offset, olcao_cand);
  pair_gi.clear();
  pair_gj.clear();
  pair_shift.clear();

  // the atoms of the charge equilibration in QEq order (owned blocks in rank order): what
  // does not change between builds is gathered here, once per build
  const int nprocs = comm->nprocs;
  const int nown = owned.size();
  counts.assign(nprocs, 0);
  displs.assign(nprocs, 0);
  MPI_Allgather(&nown, 1, MPI_INT, counts.data(), 1, MPI_INT, world);
  for (int r = 1; r < nprocs; ++r) displs[r] = displs[r - 1] + counts[r - 1];
  const int n = displs[nprocs - 1] + counts[nprocs - 1];
  std::vector<tagint> to(nown);
  std::vector<int> eo(nown);
  for (int a = 0; a < nown; ++a) {
    to[a] = atom->tag[owned[a]];
    eo[a] = type_elem[type[owned[a]]];
  }
  tag_all.resize(n);
  elem_all.resize(n);
  MPI_Allgatherv(to.data(), nown, MPI_LMP_TAGINT, tag_all.data(), counts.data(), displs.data(),
                 MPI_LMP_TAGINT, world);
  MPI_Allgatherv(eo.data(), nown, MPI_INT, elem_all.data(), counts.data(), displs.data(),
                 MPI_INT, world);
  alpha_all.resize(n);
  hardness_all.resize(n);
  for (int k = 0; k < n; ++k) {
    alpha_all[k] = width[elem_all[k]];
    hardness_all[k] = hardness[elem_all[k]];
  }
  if (!periodic) return;

  // QEq index of every local and ghost atom (ghosts by atom ID)
  tagint tmax = 0;
  for (int k = 0; k < n; ++k) tmax = std::max(tmax, tag_all[k]);
  std::vector<int> by_tag(tmax + 1, -1);
  for (int k = 0; k < n; ++k) by_tag[tag_all[k]] = k;
  const int nall = atom->nlocal + atom->nghost;
  std::vector<int> global_index(nall, -1);
  tagint *tag = atom->tag;
  for (int i = 0; i < nall; ++i)
    if (type_elem[type[i]] >= 0 && tag[i] <= tmax) global_index[i] = by_tag[tag[i]];
  const std::vector<int> &cnt = counts, &dsp = displs;

  // positions of all atoms (QEq order): a ghost is its atom shifted by whole cell vectors
  std::vector<double> xo(3 * (size_t) nown), xall(3 * (size_t) n);
  for (int a = 0; a < nown; ++a)
    for (int k = 0; k < 3; ++k) xo[3 * a + k] = x[owned[a]][k];
  std::vector<int> cnt3(nprocs), dsp3(nprocs);
  for (int r = 0; r < nprocs; ++r) {
    cnt3[r] = 3 * cnt[r];
    dsp3[r] = 3 * dsp[r];
  }
  MPI_Allgatherv(xo.data(), 3 * nown, MPI_DOUBLE, xall.data(), cnt3.data(), dsp3.data(),
                 MPI_DOUBLE, world);
  // rows of the cell: (xprd, 0, 0), (xy, yprd, 0), (xz, yz, zprd); h = xprd yprd zprd yz xz xy
  const double *h = domain->h;

  const double reach = ewald.real_cutoff + skin;
  const double reach2 = reach * reach;
  for (int i : owned) {
    const int gi = global_index[i];
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      const int gj = global_index[j];
      if (gj < 0) continue;    // outside the charge equilibration
      // one of (gi, gj) and (gj, gi): the smaller index first when the sum is even, the
      // larger first when it is odd, which spreads the pairs between two ranks' atoms
      // evenly over both (smaller-first alone would give them all to the lower rank)
      if (gj != gi && ((gi < gj) != (((gi + gj) & 1) == 0))) continue;
      const double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
      if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] > reach2) continue;
      if (gj == gi && !(d[0] > 0.0 || (d[0] == 0.0 && (d[1] > 0.0 || (d[1] == 0.0 && d[2] > 0.0)))))
        continue;
      // image of j's atom as whole cell vectors (lower-triangular cell: z, then y, then x)
      const double *xa = &xall[3 * (size_t) gj];
      const double e[3] = {x[j][0] - xa[0], x[j][1] - xa[1], x[j][2] - xa[2]};
      const double s2 = std::round(e[2] / h[2]);
      const double s1 = std::round((e[1] - s2 * h[3]) / h[1]);
      const double s0 = std::round((e[0] - s1 * h[5] - s2 * h[4]) / h[0]);
      if (std::fabs(s0) > 127 || std::fabs(s1) > 127 || std::fabs(s2) > 127)
        error->one(FLERR, "snapqeq: Ewald real-space cutoff spans more than 127 cells");
      pair_gi.push_back(gi);
      pair_gj.push_back(gj);
      pair_shift.push_back((signed char) s0);
      pair_shift.push_back((signed char) s1);
      pair_shift.push_back((signed char) s2);
    }
  }
}

/* ----------------------------------------------------------------------
   candidates of a bispectrum from the full list: the neighbours of each owned atom (CSR)
   within cut + skin that take part in the charge equilibration
------------------------------------------------------------------------- */

void PairSNAPQEq::trim_candidates(double cut, std::vector<int> &offset, std::vector<int> &cand)
{
  double **x = atom->x;
  int *type = atom->type;
  const double reach2 = (cut + neighbor->skin) * (cut + neighbor->skin);
  offset.assign(1, 0);
  cand.clear();
  for (int i : owned) {
    const int *jlist = list->firstneigh[i];
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_elem[type[j]] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < reach2) cand.push_back(j);
    }
    offset.push_back((int) cand.size());
  }
}

/* ----------------------------------------------------------------------
   neighbours of the owned atoms for descriptor d from its candidates, with the rules of
   snapqeq.Bispectrum: pair cutoff rcutfac (R_i + R_j), kept if 1e-20 < r^2 < rc^2, weight
   of the neighbour's element, inner switch from the mean of the two elements'
   sinner/dinner
------------------------------------------------------------------------- */

void PairSNAPQEq::collect_neighbors(const Descriptor &d, const std::vector<int> &cand_offset,
                                    const std::vector<int> &cand, Neighbors &out)
{
  double **x = atom->x;
  int *type = atom->type;
  const bool inner = d.opt.switchinnerflag;
  out.offset.assign(1, 0);
  out.index.clear();
  out.elem.clear();
  out.rij.clear();
  out.rcut.clear();
  out.weight.clear();
  out.sinner.clear();
  out.dinner.clear();
  for (size_t a = 0; a < owned.size(); ++a) {
    const int i = owned[a];
    const int ei = type_elem[type[i]];
    for (int c = cand_offset[a]; c < cand_offset[a + 1]; ++c) {
      const int j = cand[c];
      const int ej = type_elem[type[j]];
      const double r[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
      const double rsq = r[0] * r[0] + r[1] * r[1] + r[2] * r[2];
      const double rc = d.cut(ei, ej);
      if (!(rsq < rc * rc && rsq > 1.0e-20)) continue;
      out.index.push_back(j);
      out.elem.push_back(d.chem_block[ej]);
      out.rij.insert(out.rij.end(), r, r + 3);
      out.rcut.push_back(rc);
      out.weight.push_back(d.weight[ej]);
      if (inner) {
        out.sinner.push_back(0.5 * (d.sinner[ei] + d.sinner[ej]));
        out.dinner.push_back(0.5 * (d.dinner[ei] + d.dinner[ej]));
      }
    }
    out.offset.push_back((int) out.index.size());
  }
}

/* ----------------------------------------------------------------------
   bispectrum of the owned atoms; the neighbour data stay for the force pass
------------------------------------------------------------------------- */

void PairSNAPQEq::compute_descriptors()
{
  double **x = atom->x;
  int *type = atom->type;
  if (cand_dirty || neighbor->ncalls != cand_ncalls || neighbor->lastcall != cand_lastcall) {
    update_candidates();
    cand_dirty = false;
    cand_ncalls = neighbor->ncalls;
    cand_lastcall = neighbor->lastcall;
  }

  collect_neighbors(desc, cand_offset, cand_snap, nbr);

  const int nown = owned.size();
  x_owned.resize(3 * (size_t) nown);
  for (int a = 0; a < nown; ++a)
    for (int k = 0; k < 3; ++k) x_owned[3 * a + k] = x[owned[a]][k];

  // keep the workspaces of as many atoms as the budget allows (the neighbour arrays they
  // point into stay unchanged until the force pass)
  const auto &o = sna->options();
  const int nelem = o.chemflag ? o.nelements : 1;
  double bytes = 0.0;
  ncached = 0;
  while (ncached < nown) {
    const int cnt = nbr.offset[ncached + 1] - nbr.offset[ncached];
    bytes += workspace_bytes(o.twojmax, nelem, cnt);
    if (bytes > kCacheBytes) break;
    ++ncached;
  }
  while ((int) sna_cache.size() < ncached)
    sna_cache.push_back(std::make_unique<snapqeq::SNA>(*sna));

  blin.assign((size_t) nown * ncoeff_linear, 0.0);
  for (int a = 0; a < nown; ++a) {
    const int block = desc.chem_block[type_elem[type[owned[a]]]];
    snapqeq::SNA *w = a < ncached ? sna_cache[a].get() : sna.get();
    nbr.load(a, w);
    w->compute_ui(block);
    w->compute_zi();
    w->compute_bi(block, &blin[(size_t) a * ncoeff_linear]);
  }
}

/* ----------------------------------------------------------------------
   positions and chi of all atoms on every rank (QEq order)
------------------------------------------------------------------------- */

void PairSNAPQEq::gather_system()
{
  // positions and chi of the owned atoms in one message (what changes only with the
  // neighbour lists: update_candidates())
  const int nprocs = comm->nprocs;
  const int nown = owned.size();
  const int n = displs[nprocs - 1] + counts[nprocs - 1];
  std::vector<double> send(4 * (size_t) nown), recv(4 * (size_t) n);
  for (int a = 0; a < nown; ++a) {
    for (int k = 0; k < 3; ++k) send[4 * a + k] = x_owned[3 * a + k];
    send[4 * a + 3] = chi_own[a];
  }
  std::vector<int> counts4(nprocs), displs4(nprocs);
  for (int r = 0; r < nprocs; ++r) {
    counts4[r] = 4 * counts[r];
    displs4[r] = 4 * displs[r];
  }
  MPI_Allgatherv(send.data(), 4 * nown, MPI_DOUBLE, recv.data(), counts4.data(), displs4.data(),
                 MPI_DOUBLE, world);
  x_all.resize(3 * (size_t) n);
  chi_all.resize(n);
  for (int i = 0; i < n; ++i) {
    for (int k = 0; k < 3; ++k) x_all[3 * i + k] = recv[4 * i + k];
    chi_all[i] = recv[4 * i + 3];
  }
}

/* ----------------------------------------------------------------------
   geometry of the electrostatics kernel: the positions of all atoms and, for periodic
   cells, the Ewald pairs of update_candidates() as QEq indices with cell shifts (the
   kernel puts their forces on the owned atoms, summed over the ranks)
------------------------------------------------------------------------- */

void PairSNAPQEq::setup_electrostatics()
{
  const int n = chi_all.size();
  const int first = displs[comm->me];
  const int nown = owned.size();
  // the preconditioner of the charge equilibration may serve the next few steps while the
  // QEq order of the atoms holds (until the next neighbour-list build): its set-up is a few
  // % of a step, the iterations hardly change (8.7 per step either way, 2048-atom NaCl)
  electrostatics->allow_preconditioner_reuse(qeq_order_changed ? 0 : kPreconditionerAge);
  qeq_order_changed = false;
  try {
    if (!periodic) {
      electrostatics->setup_free(n, first, nown, x_all.data(), alpha_all.data(), owned.data());
      return;
    }
    // the candidate pairs of the last build; the kernel drops those beyond the cutoff
    snapqeq::PairList pairs;
    pairs.size = (long) pair_gi.size();
    pairs.i = pair_gi.data();
    pairs.j = pair_gj.data();
    pairs.shift = pair_shift.data();
    pairs.half = true;
    double amax = 0.0;
    for (double a : alpha_all) amax = std::max(amax, a);
    const double *h = domain->h;    // xprd yprd zprd yz xz xy
    const double cell[9] = {h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]};
    const auto params = snapqeq::ewald_parameters(n, domain->xprd * domain->yprd * domain->zprd,
                                                  amax, ewald_accuracy, ewald.real_cutoff);
    electrostatics->setup_periodic(n, first, nown, x_all.data(), alpha_all.data(), cell,
                                   params, pairs, owned.data());
  } catch (const std::exception &e) {
    error->all(FLERR, "snapqeq electrostatics: {}", e.what());
  }
}

/* ----------------------------------------------------------------------
   minimize 1/2 x^T (J + A_es) x + c^T x on sum x = total (history slot: 0 charges,
   1 short-range adjoint); returns the solver statistics.  Initial guess per atom ID: the
   polynomial extrapolation of the last kHistory solutions (fewer at the start of a run;
   none: the Jacobi estimate -c / diag).  In MD its error falls like dt^kHistory, so the
   solver has only a few orders of magnitude left to gain: with rattled NaCl at 300 K and
   1 fs, 5-7 iterations to tol 1e-10 with five solutions, 8-9 with three, 10 with two.
   The guess only changes the iteration count, never the converged charges.
   potential: receives A_es x.
------------------------------------------------------------------------- */

snapqeq::SolveStats PairSNAPQEq::solve(int slot, const double *c, double total, double *x,
                                       const char *what, double *potential)
{
  const int n = electrostatics->size();
  const auto &diag = electrostatics->diagonal();
  tagint tmax = 0;
  for (int i = 0; i < n; ++i) tmax = std::max(tmax, tag_all[i]);
  auto &h = history[slot];
  if ((tagint) h[0].size() < tmax + 1)
    for (auto &v : h) v.resize(tmax + 1, std::numeric_limits<double>::quiet_NaN());
  // binomial coefficients of the extrapolating polynomial through the m latest points; a
  // second evaluation of the same step (the set-up of the next run) starts from the last
  // solution and replaces it, so that the history keeps one point per step
  const bool repeat = update->ntimestep == history_step[slot];
  for (int i = 0; i < n; ++i) {
    const tagint t = tag_all[i];
    int m = 0;
    while (m < kHistory && !std::isnan(h[m][t])) ++m;
    if (repeat) m = std::min(m, 1);
    if (m == 0) {
      x[i] = -c[i] / (hardness_all[i] + diag[i]);
      continue;
    }
    double guess = 0.0, coef = 1.0;
    for (int j = 1; j <= m; ++j) {
      coef = coef * (m - j + 1) / j;    // binom(m, j)
      guess += ((j & 1) ? coef : -coef) * h[j - 1][t];
    }
    x[i] = guess;
  }
  const auto stats = snapqeq::solve_constrained(*electrostatics, hardness_all.data(), c, total,
                                                x, tol, maxiter, potential);
  for (int i = 0; i < n; ++i) {
    const tagint t = tag_all[i];
    if (!repeat)
      for (int j = kHistory - 1; j > 0; --j) h[j][t] = h[j - 1][t];
    h[0][t] = x[i];
  }
  history_step[slot] = update->ntimestep;
  if (!stats.converged && comm->me == 0 && warned_unconverged < kMaxWarnings) {
    ++warned_unconverged;
    error->warning(FLERR, "snapqeq {} solve not converged after {} iterations (residual {:.3g}, "
                   "tol {:.3g})", what, stats.iterations, stats.residual, tol);
  }
  return stats;
}

/* ----------------------------------------------------------------------
   charges: minimize U(q) = chi.q + 1/2 q (J + A_es) q on sum q = Q; the multiplier is the
   equalized electronegativity (chemical potential) dU/dq_i
------------------------------------------------------------------------- */

void PairSNAPQEq::equilibrate()
{
  const int n = chi_all.size();
  // the geometry is the same for every committee member: set up once per step
  if (member_index == 0) setup_electrostatics();
  if (!logged_setup && comm->me == 0) {
    if (periodic)
      utils::logmesg(lmp, "snapqeq: {} atoms in the charge equilibration, Ewald beta {:.4f}/A, "
                     "real-space cutoff {:.3f} A, {} k-vectors\n",
                     n, electrostatics->parameters().beta,
                     electrostatics->parameters().real_cutoff, electrostatics->kvectors());
    else
      utils::logmesg(lmp, "snapqeq: {} atoms in the charge equilibration, free boundaries\n", n);
  }
  logged_setup = true;

  q_all.assign(n, 0.0);
  phi_all.assign(n, 0.0);
  const auto stats = solve(2 * member_index, chi_all.data(), total_charge, q_all.data(), "charge equilibration",
                           phi_all.data());
  last_iterations = stats.iterations;
  chemical_potential = stats.multiplier;
}

/* ----------------------------------------------------------------------
   adjoint bispectrum forces of E = sum_i beta_i . B_i (beta from autograd)
------------------------------------------------------------------------- */

void PairSNAPQEq::adjoint_forces(double *f)
{
  const int nlocal = atom->nlocal;
  int *type = atom->type;
  const int nown = owned.size();
  double dedr[3];
  for (int a = 0; a < nown; ++a) {
    const int i = owned[a];
    const int block = desc.chem_block[type_elem[type[i]]];
    snapqeq::SNA *w = a < ncached ? sna_cache[a].get() : nullptr;
    if (!w) {    // beyond the cache: U and Z once more
      w = sna.get();
      nbr.load(a, w);
      w->compute_ui(block);
      w->compute_zi();
    }
    w->compute_yi(&beta[(size_t) a * ncoeff_linear]);
    const int off = nbr.offset[a];
    for (int jj = 0; jj < nbr.offset[a + 1] - off; ++jj) {
      w->compute_deidrj(jj, dedr);    // dE_i/dr_ij = dE_i/dr_j = -dE_i/dr_i
      const int j = nbr.index[off + jj];
      for (int c = 0; c < 3; ++c) {
        f[3 * (size_t) i + c] += dedr[c];
        f[3 * (size_t) j + c] -= dedr[c];
      }
      const double *rij = &nbr.rij[3 * (size_t) (off + jj)];
      if (evflag)
        ev_tally_xyz(i, j, nlocal, force->newton_pair, 0.0, 0.0, dedr[0], dedr[1], dedr[2], -rij[0],
                     -rij[1], -rij[2]);
    }
  }
}

/* ----------------------------------------------------------------------
   forces and virial of 1/2 q^T A_es b at fixed charges (b = q, or q + 2 mu with the
   short-range network), on local and (periodic cells) ghost atoms
------------------------------------------------------------------------- */

void PairSNAPQEq::electrostatic_forces(const std::vector<double> &b, double *f)
{
  double vir[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  double *va = vflag_atom ? &vatom[0][0] : nullptr;
  electrostatics->forces(q_all.data(), b.data(), f, vir, va);
  if (vflag_global)
    for (int k = 0; k < 6; ++k) virial[k] += vir[k];
}

/* ---------------------------------------------------------------------- */

void PairSNAPQEq::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  grow_peratom();

  compute_descriptors();    // B_i of the owned atoms, neighbours kept
  check_guard();            // pairs and B_i against the training envelope

  // every committee member in full, tallied with weight 1/n (a single model: once, w = 1);
  // the forces of each member go into its own array first for the spread
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const double w = 1.0 / n_members;
  for (int i = 0; i < nlocal; ++i) q_atom[i] = chi_atom[i] = phi_atom[i] = 0.0;
  if (n_members > 1) {
    fmember.assign((size_t) n_members * nall * 3, 0.0);
    fmember_nall = nall;
  }
  member_energy.assign(n_members, 0.0);
  double mu_mean = 0.0, ecoul_mean = 0.0;
  int iterations = 0;
  for (int k = 0; k < n_members; ++k) {
    use_member(k);
    evaluate_network();       // chi_i; the autograd graph stays for beta_i
    gather_system();          // all atoms of the charge equilibration on every rank
    equilibrate();            // q, phi, chemical potential
    if (has_olcao && olcao_due()) compute_olcao();

    // beta_i = w_i dchi_i/dB_i (+ dE_short_i/dB_i) and the electrostatic forces of
    // 1/2 q^T A_es b: w = b = q for the variational CENT energy, plus the adjoint mu
    // (w = q + mu, b = q + 2 mu) with a short-range network
    const int first = displs[comm->me];
    const int nown = owned.size();
    std::vector<double> weight(q_all.begin() + first, q_all.begin() + first + nown);
    std::vector<double> b_es = q_all;
    std::vector<double> e_short(nown, 0.0);
    iterations += last_iterations;
    if (has_short_range) iterations += short_range_adjoint(weight, b_es, e_short);

    beta.assign((size_t) nown * ncoeff_linear, 0.0);
    if (nown > 0) {
      try {
        model->beta(weight, has_short_range, beta.data());
      } catch (const std::exception &e) {
        error->one(FLERR, "snapqeq model gradient failed: {}", e.what());
      }
    }
    if (n_members > 1) {    // forces and virials of this member with weight 1/n
      for (double &v : beta) v *= w;
      for (double &v : b_es) v *= w;
    }

    member_energy[k] = tally_energies(e_short, w);
    double ecoul = 0.0;
    for (size_t i = 0; i < q_all.size(); ++i) ecoul += 0.5 * q_all[i] * phi_all[i];
    mu_mean += w * chemical_potential;
    ecoul_mean += w * ecoul;

    double *f = n_members > 1 ? fmember.data() + (size_t) k * nall * 3
                              : (atom->nmax > 0 ? &atom->f[0][0] : nullptr);
    adjoint_forces(f);
    electrostatic_forces(b_es, f);
    if (n_members > 1 && nall > 0) {
      double *fa = &atom->f[0][0];
      for (size_t m = 0; m < 3 * (size_t) nall; ++m) fa[m] += f[m];
    }
  }
  if (atom->q_flag)
    for (int a : owned) atom->q[a] = q_atom[a];
  if (n_members > 1) committee_statistics();

  // `compute pair snapqeq` sums pvector over the ranks: rank 0 carries the values
  const bool root = comm->me == 0;
  pvector[0] = root ? mu_mean : 0.0;
  pvector[1] = root ? (double) iterations : 0.0;
  pvector[2] = root ? ecoul_mean : 0.0;
  pvector[3] = root ? energy_std : 0.0;
  pvector[4] = root ? force_std_max : 0.0;
}

/* ----------------------------------------------------------------------
   committee member k's networks, hardness and reference energies for the next evaluation
------------------------------------------------------------------------- */

void PairSNAPQEq::use_member(int k)
{
  member_index = k;
  model->member = n_members > 1 ? k : -1;
  hardness = member_hardness[k];
  energy0 = member_e0[k];
  for (size_t i = 0; i < elem_all.size(); ++i) hardness_all[i] = hardness[elem_all[i]];
}

/* ----------------------------------------------------------------------
   spread of the committee (snapqeq.models.committee.committee_statistics): energy std of the
   system, per-atom force std from the members' forces (ghost parts summed onto their
   owners by a reverse communication), the largest over all atoms, and the threshold
------------------------------------------------------------------------- */

void PairSNAPQEq::committee_statistics()
{
  const int nm = n_members;
  const int nlocal = atom->nlocal;
  const size_t nall = fmember_nall;
  comm->reverse_comm(this);

  std::vector<double> e(nm);
  MPI_Allreduce(member_energy.data(), e.data(), nm, MPI_DOUBLE, MPI_SUM, world);
  double mean = 0.0, var = 0.0;
  for (double v : e) mean += v / nm;
  for (double v : e) var += (v - mean) * (v - mean) / nm;
  energy_std = std::sqrt(var);

  // the stored forces carry the weight 1/n: member k's force is n x its entry
  for (int i = 0; i < nlocal; ++i) fstd_atom[i] = 0.0;
  struct {
    double value;
    int rank;
  } mine = {-1.0, comm->me}, worst;
  double where[2] = {0.0, -1.0};    // ID and element of this rank's largest spread
  for (int a : owned) {
    double fmean[3] = {0.0, 0.0, 0.0}, sum = 0.0;
    for (int k = 0; k < nm; ++k)
      for (int c = 0; c < 3; ++c) fmean[c] += fmember[(k * nall + a) * 3 + c];
    for (int k = 0; k < nm; ++k)
      for (int c = 0; c < 3; ++c) {
        const double d = nm * fmember[(k * nall + a) * 3 + c] - fmean[c];
        sum += d * d / nm;
      }
    fstd_atom[a] = std::sqrt(sum);
    if (fstd_atom[a] > mine.value) {
      mine.value = fstd_atom[a];
      where[0] = (double) atom->tag[a];
      where[1] = type_elem[atom->type[a]];
    }
  }
  MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE_INT, MPI_MAXLOC, world);
  MPI_Bcast(where, 2, MPI_DOUBLE, worst.rank, world);
  force_std_max = std::max(worst.value, 0.0);

  // the threshold: the same decision on every rank (reduced values)
  const int natoms = chi_all.size();
  std::string message[2];
  if (committee_ethr > 0.0 && natoms > 0 && energy_std / natoms > committee_ethr)
    message[0] = fmt::format("snapqeq committee: energy std {:.6g} eV/atom ({:.6g} eV over {} "
                             "atoms) exceeds committee_threshold {:g} eV/atom: the members "
                             "disagree, the model extrapolates there",
                             energy_std / natoms, energy_std, natoms, committee_ethr);
  if (committee_fthr > 0.0 && worst.value > committee_fthr) {
    const int elem = (int) where[1];
    message[1] = fmt::format("snapqeq committee: force std {:.6g} eV/Angstrom of atom {} ({}) "
                             "exceeds committee_threshold {:g} eV/Angstrom: the members "
                             "disagree, the model extrapolates there",
                             worst.value, (bigint) where[0], elem >= 0 ? elem_names[elem] : "?",
                             committee_fthr);
  }
  for (int kind = 0; kind < 2; ++kind) {
    if (message[kind].empty()) continue;
    if (committee_stop)
      error->all(FLERR, message[kind] + "; set committee_action to warn to go on with a "
                 "warning, or add such structures to the training data");
    if (++committee_warnings[kind] <= kMaxWarnings && comm->me == 0)
      error->warning(FLERR, message[kind] + (committee_warnings[kind] == kMaxWarnings
                                                 ? " (further warnings of this kind muted)" : ""));
  }
}

/* ----------------------------------------------------------------------
   reverse communication of the committee members' forces (ghosts to owners)
------------------------------------------------------------------------- */

int PairSNAPQEq::pack_reverse_comm(int n, int first, double *buf)
{
  int m = 0;
  const size_t nall = fmember_nall;
  for (int i = first; i < first + n; ++i)
    for (int k = 0; k < n_members; ++k)
      for (int c = 0; c < 3; ++c) buf[m++] = fmember[(k * nall + i) * 3 + c];
  return m;
}

void PairSNAPQEq::unpack_reverse_comm(int n, int *list, double *buf)
{
  int m = 0;
  const size_t nall = fmember_nall;
  for (int i = 0; i < n; ++i) {
    const int j = list[i];
    for (int k = 0; k < n_members; ++k)
      for (int c = 0; c < 3; ++c) fmember[(k * nall + j) * 3 + c] += buf[m++];
  }
}

/* ----------------------------------------------------------------------
   OLCAO potential coefficients of the owned atoms: the head on the site features
   [B | medium-range B | q phi] (snapqeq.models.site_features.SiteFeatures.matrix) with this
   step's bispectrum, charges and potentials
------------------------------------------------------------------------- */

void PairSNAPQEq::compute_olcao()
{
  // a request the neighbour cutoff of this run does not cover: a compute snapqeq/atom
  // defined between runs is wanted at the next init_style, not before
  if (!olcao_cutoff)
    error->all(FLERR, "Pair style snapqeq: OLCAO coefficients requested after the run was set "
               "up; start a new run");
  const int nown = owned.size();
  const int first = displs[comm->me];
  const int km = olcao_has_medium ? olcao_ncoeff_linear : 0;
  std::vector<double> bmed((size_t) nown * km);
  if (km > 0) {
    collect_neighbors(olcao_desc, olcao_cand_offset, olcao_cand, olcao_nbr);
    int *type = atom->type;
    for (int a = 0; a < nown; ++a) {
      const int block = olcao_desc.chem_block[type_elem[type[owned[a]]]];
      olcao_nbr.load(a, olcao_sna.get());
      olcao_sna->compute_ui(block);
      olcao_sna->compute_zi();
      olcao_sna->compute_bi(block, &bmed[(size_t) a * km]);
    }
  }

  // NaN for local atoms outside the charge equilibration (NULL types), as beyond a series
  const int d = olcao_ncol;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int i = 0; i < atom->nlocal; ++i)
    for (int k = 0; k < d; ++k) olcao_mean[i][k] = olcao_std[i][k] = nan;
  if (nown > 0) {
    std::vector<double> mean((size_t) nown * d), std((size_t) nown * d);
    try {
      model->potential_coefficients(nown, blin.data(), ncoeff_linear, bmed.data(), km,
                                    olcao_long_range ? &q_all[first] : nullptr, &phi_all[first],
                                    elem_own.data(), d, mean.data(), std.data());
    } catch (const std::exception &e) {
      error->one(FLERR, "snapqeq OLCAO head evaluation failed: {}", e.what());
    }
    for (int a = 0; a < nown; ++a)
      for (int k = 0; k < d; ++k) {
        olcao_mean[owned[a]][k] = mean[(size_t) a * d + k];
        olcao_std[owned[a]][k] = std[(size_t) a * d + k];
      }
  }
  olcao_step = update->ntimestep;
}

/* ----------------------------------------------------------------------
   chi of the owned atoms from the TorchScript network
------------------------------------------------------------------------- */

void PairSNAPQEq::evaluate_network()
{
  const int nown = owned.size();
  elem_own.resize(nown);
  for (int a = 0; a < nown; ++a) elem_own[a] = type_elem[atom->type[owned[a]]];
  chi_own.clear();
  if (nown == 0) return;
  try {
    chi_own = model->electronegativity(blin.data(), elem_own.data(), nown, ncoeff_linear);
  } catch (const std::exception &e) {
    error->one(FLERR, "snapqeq model evaluation failed: {}", e.what());
  }
}

/* ----------------------------------------------------------------------
   short-range network: per-atom energies at the charges and the adjoint solve
     minimize 1/2 mu (J + A_es) mu + g.mu on sum mu = 0,  g = dE_short/dq,
   i.e. [A 1; 1^T 0][mu; nu] = [-g; 0] (SPEC section 5); adds mu to the chi weights and
   2 mu to the electrostatic force vector; returns the solver iterations
------------------------------------------------------------------------- */

int PairSNAPQEq::short_range_adjoint(std::vector<double> &weight, std::vector<double> &b_es,
                                     std::vector<double> &e_short)
{
  const int n = q_all.size();
  const int nown = owned.size();
  const int first = displs[comm->me];
  const std::vector<double> q_own(q_all.begin() + first, q_all.begin() + first + nown);
  std::vector<double> g_own;
  if (nown > 0) {
    try {
      g_own = model->short_range(q_own, e_short);
    } catch (const std::exception &e) {
      error->one(FLERR, "snapqeq short-range network evaluation failed: {}", e.what());
    }
  }
  std::vector<double> g_all(n), mu(n);
  MPI_Allgatherv(g_own.data(), nown, MPI_DOUBLE, g_all.data(), counts.data(), displs.data(),
                 MPI_DOUBLE, world);
  if (n == 0) return 0;
  const int iterations =
      solve(2 * member_index + 1, g_all.data(), 0.0, mu.data(), "short-range adjoint").iterations;
  for (int i = 0; i < n; ++i) b_es[i] += 2.0 * mu[i];
  for (int a = 0; a < nown; ++a) weight[a] += mu[first + a];
  return iterations;
}

/* ----------------------------------------------------------------------
   energies and per-atom outputs of the owned atoms, with weight w (1/n in a committee):
   E0 + chi q + J q^2/2 (+ E_short) as the van der Waals part, q phi/2 (Gaussian
   electrostatics incl. self energy) as the Coulomb part; returns this rank's energy of
   the current member (eV, unweighted)
------------------------------------------------------------------------- */

double PairSNAPQEq::tally_energies(const std::vector<double> &e_short, double w)
{
  const int first = displs[comm->me];
  double mine = 0.0;
  for (size_t a = 0; a < owned.size(); ++a) {
    const int i = owned[a];
    const int e = elem_own[a];
    const double q = q_all[first + a];
    const double phi = phi_all[first + a];
    const double elocal = energy0[e] + chi_own[a] * q + 0.5 * hardness[e] * q * q + e_short[a];
    const double ees = 0.5 * q * phi;
    mine += elocal + ees;
    if (eflag_global) {
      eng_vdwl += w * elocal;
      eng_coul += w * ees;
    }
    if (eflag_atom) eatom[i] += w * (elocal + ees);
    q_atom[i] += w * q;
    chi_atom[i] += w * chi_own[a];
    phi_atom[i] += w * phi;
  }
  return mine;
}

/* ---------------------------------------------------------------------- */

double PairSNAPQEq::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += 3.0 * nmax_atom * sizeof(double);
  bytes += (double) (blin.capacity() + beta.capacity() + nbr.rij.capacity() +
                     nbr.rcut.capacity() + nbr.weight.capacity() + x_owned.capacity() +
                     olcao_nbr.rij.capacity() + olcao_nbr.rcut.capacity() +
                     olcao_nbr.weight.capacity()) *
      sizeof(double);
  if (has_olcao) bytes += 2.0 * nmax_atom * olcao_ncol * sizeof(double);
  if (n_members > 1) bytes += (nmax_atom + (double) fmember.capacity()) * sizeof(double);
  const double n = chi_all.size();
  bytes += 12.0 * n * sizeof(double);
  bytes += 4.0 * (pair_gi.capacity() + pair_gj.capacity()) + pair_shift.capacity();
  if (electrostatics) bytes += electrostatics->memory_bytes();
  if (sna) {
    const auto &o = sna->options();
    for (int a = 0; a < ncached; ++a)
      bytes += workspace_bytes(o.twojmax, o.chemflag ? o.nelements : 1,
                               nbr.offset[a + 1] - nbr.offset[a]);
  }
  return bytes;
}
