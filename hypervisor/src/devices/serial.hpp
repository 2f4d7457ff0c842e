// A 16550A UART (COM1). Output goes to a ConsoleSink (the vmm's stdout); input comes from
// push_input() (the vmm's stdin when interactive). Interrupts through a level-setting callback.
//
// Lock order: mu_ only; the irq callback and the output write run under it (both are cheap
// and never call back into the UART).
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

#include "devices/bus.hpp"
#include "devices/console_sink.hpp"

namespace hypervisor {

class Serial16550 final : public BusDevice {
public:
    using IrqLine = std::function<void(bool level)>;
    Serial16550(ConsoleSink out, IrqLine irq) : out_(out), irq_(std::move(irq)) {}

    void read(std::uint64_t offset, std::span<std::uint8_t> data) override;
    void write(std::uint64_t offset, std::span<const std::uint8_t> data) override;
    // Queues bytes for the guest to read (bounded; excess is dropped and counted).
    void push_input(std::span<const std::uint8_t> bytes);
    [[nodiscard]] std::uint64_t bytes_out() const;

private:
    void update_irq_locked();
    std::uint8_t read_reg_locked(std::uint64_t reg);
    void write_reg_locked(std::uint64_t reg, std::uint8_t v);

    mutable std::mutex mu_;
    ConsoleSink out_;
    IrqLine irq_;
    std::deque<std::uint8_t> rx_;
    std::uint8_t ier_ = 0, lcr_ = 0, mcr_ = 0, scr_ = 0, dll_ = 0x0c, dlm_ = 0, fcr_ = 0;
    bool thr_irq_pending_ = false;  // THRE interrupt armed until IIR is read or THR written
    bool irq_level_ = false;
    std::uint64_t bytes_out_ = 0;
    std::uint64_t rx_dropped_ = 0;
};

}  // namespace hypervisor
