// MPI implementation of the collectives of the snapqeq electrostatics kernel
// (kernel/electrostatics.h), for the LAMMPS pair style.  The kernel itself knows no MPI.
#pragma once

#include <mpi.h>

#include "electrostatics.h"

namespace snapqeq {

class MPICommunicator : public Communicator {
 public:
  explicit MPICommunicator(MPI_Comm comm) : comm_(comm)
  {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void allreduce_sum(double *data, int n) override
  {
    if (size_ > 1 && n > 0) MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_DOUBLE, MPI_SUM, comm_);
  }
  void allreduce_max(double *data, int n) override
  {
    if (size_ > 1 && n > 0) MPI_Allreduce(MPI_IN_PLACE, data, n, MPI_DOUBLE, MPI_MAX, comm_);
  }
  void allgatherv(const double *send, int count, double *recv, const int *counts,
                  const int *displs) override
  {
    MPI_Allgatherv(send, count, MPI_DOUBLE, recv, counts, displs, MPI_DOUBLE, comm_);
  }

 private:
  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
};

}    // namespace snapqeq
