#include "nvme/controller_registers.hpp"

namespace nitro_card::nvme {

namespace {

// The mask of bits a host write may change, by register; 0 for registers whose writes are
// accepted and dropped.
std::uint64_t write_mask(std::uint32_t reg_offset) {
    switch (reg_offset) {
        case reg::CC:
            return writable::CC;
        case reg::AQA:
            return writable::AQA;
        case reg::ASQ:
        case reg::ACQ:
            return writable::QUEUE_BASE;
        default:
            return 0;  // INTMS, INTMC, NSSR
    }
}

// The bytes [offset, offset + size) of a register, if the access is one the controller takes.
std::expected<const RegisterInfo*, RegisterFault> locate(std::uint32_t offset, unsigned size) {
    const RegisterInfo* r = find_register(offset);
    if (r == nullptr) return std::unexpected(RegisterFault::Hole);
    const std::uint32_t within = offset - r->offset;
    const bool dword = size == 4 && within % 4 == 0;
    const bool qword = size == 8 && within == 0 && r->width == 8;
    if (!dword && !qword) return std::unexpected(RegisterFault::BadSize);
    return r;
}

std::uint64_t lane_mask(unsigned size) {
    return size == 8 ? ~std::uint64_t{0} : 0xffffffffu;
}

}  // namespace

std::string_view describe(RegisterFault f) {
    switch (f) {
        case RegisterFault::BadSize:
            return "access of a size or alignment the register lacks";
        case RegisterFault::Hole:
            return "no register at this offset";
        case RegisterFault::ReadOnly:
            return "write to a read-only register";
    }
    return "unknown register fault";
}

RegisterFile::RegisterFile(std::uint64_t cap, std::uint32_t vs) {
    set(reg::CAP, cap);
    set(reg::VS, vs);
}

void RegisterFile::reset() {
    const std::uint64_t cap = get(reg::CAP), vs = get(reg::VS);
    values_.fill(0);
    set(reg::CAP, cap);
    set(reg::VS, vs);
}

std::expected<std::uint64_t, RegisterFault> RegisterFile::read(std::uint32_t offset,
                                                               unsigned size) const {
    auto r = locate(offset, size);
    if (!r) return std::unexpected(r.error());
    const unsigned shift = (offset - (*r)->offset) * 8;
    return (values_[index_of((*r)->offset)] >> shift) & lane_mask(size);
}

std::expected<RegisterWrite, RegisterFault> RegisterFile::write(std::uint32_t offset, unsigned size,
                                                                std::uint64_t value) {
    auto r = locate(offset, size);
    if (!r) return std::unexpected(r.error());
    if ((*r)->access == RegisterAccess::ReadOnly) return std::unexpected(RegisterFault::ReadOnly);

    const std::size_t i = index_of((*r)->offset);
    const unsigned shift = (offset - (*r)->offset) * 8;
    const std::uint64_t lanes = lane_mask(size) << shift;
    const std::uint64_t mask = write_mask((*r)->offset) & lanes;
    const std::uint64_t old_value = values_[i];
    values_[i] = (old_value & ~mask) | ((value << shift) & mask);
    return RegisterWrite{(*r)->offset, old_value, values_[i]};
}

}  // namespace nitro_card::nvme
